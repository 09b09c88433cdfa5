"""The sites file: where each site of a job runs, validated with errors that name the line.

```yaml
mode: sync                    # sync | async
on_standby_loss: fail-closed  # fail-closed | degrade (sync only)
standby_timeout_s: 2          # sync: how long a missing acknowledgement is waited for
lease_ttl_s: 2                # the active site's lease: a lost site is noticed this fast
primary: a                    # the site that starts the job (default: the first to come up)
security: {ca: pki/ca.crt, token_file: pki/token}
sites:
  a:
    workdir: a                # its store, sink and dead letters (relative to this file)
    ray: local                # or HOST:PORT of the site's Ray cluster
    listen: 127.0.0.1:7001    # its replication receiver
    address: 127.0.0.1:7101   # how the other site reaches it (default: listen)
    etcd: [127.0.0.1:2379, 127.0.0.1:2479, 127.0.0.1:2579]
    cert: pki/a.crt
    key: pki/a.key
  b: {...}
witness: {etcd: 127.0.0.1:2579}   # the third etcd member, which holds no job data
```

Exactly two sites; one of them is active for the job at a time. The etcd cluster spans
both sites and the witness, so losing one site keeps a quorum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from resilience._errors import InvalidSites
from resilience.replication._config import (
    MODES,
    ON_STANDBY_LOSS,
    LinkSecurity,
    Mode,
    OnStandbyLoss,
    ReplicationConfig,
)

__all__ = ["Site", "Sites"]

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.\-]+:[0-9]{1,5}")


@dataclass(frozen=True)
class Site:
    """One site: its workdir, its Ray, its replication receiver, its etcd endpoints."""

    name: str
    workdir: Path
    ray: str | None  # None: a local Ray started by the site's driver
    listen: str
    address: str
    etcd: tuple[str, ...]
    security: LinkSecurity

    @property
    def etcd_endpoint(self) -> str:
        return ",".join(self.etcd)


@dataclass(frozen=True)
class Sites:
    """A validated sites file. `Sites.load(path)` raises `InvalidSites` (file, line, why)."""

    path: Path
    sites: Mapping[str, Site]
    mode: Mode = "sync"
    on_standby_loss: OnStandbyLoss = "fail-closed"
    standby_timeout_s: float = 2.0
    lease_ttl_s: int = 2
    witness_etcd: str | None = None
    primary: str | None = None

    def site(self, name: str) -> Site:
        if name not in self.sites:
            raise InvalidSites(str(self.path), None, f"no site {name!r} (sites: "
                               f"{', '.join(sorted(self.sites))})")
        return self.sites[name]

    def peer_of(self, name: str) -> Site:
        self.site(name)
        return next(s for n, s in self.sites.items() if n != name)

    def config_for(self, name: str, *, mode: Mode | None = None,
                   on_standby_loss: OnStandbyLoss | None = None) -> ReplicationConfig:
        """What site `name` runs with (`mode` and `on_standby_loss` override the file's)."""
        site, peer = self.site(name), self.peer_of(name)
        return ReplicationConfig(
            site=name, peer=peer.name, listen=site.listen, peer_address=peer.address,
            security=site.security, mode=mode or self.mode,
            on_standby_loss=on_standby_loss or self.on_standby_loss,
            standby_timeout_s=self.standby_timeout_s, primary=self.primary)

    @classmethod
    def load(cls, path: Path) -> Sites:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidSites(str(path), None, f"cannot read the sites file: "
                               f"{e.strerror or e}") from e
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: Path) -> Sites:
        source = str(path)
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InvalidSites(source, mark.line + 1 if mark else None,
                               f"not valid YAML: {getattr(e, 'problem', e)}") from e
        doc = _Node(root, source)
        top = doc.mapping({"mode", "on_standby_loss", "standby_timeout_s", "lease_ttl_s",
                           "security", "sites", "witness", "primary"},
                          required={"sites", "security"})
        base = path.parent
        mode: Mode = top["mode"].choice(MODES) if "mode" in top else "sync"
        on_loss: OnStandbyLoss = (top["on_standby_loss"].choice(ON_STANDBY_LOSS)
                                  if "on_standby_loss" in top else "fail-closed")
        timeout = top["standby_timeout_s"].seconds() if "standby_timeout_s" in top else 2.0
        ttl = int(top["lease_ttl_s"].seconds(minimum=2)) if "lease_ttl_s" in top else 2
        security = top["security"].mapping({"ca", "token_file"}, required={"ca", "token_file"})
        ca = security["ca"].file(base)
        token = security["token_file"].file(base)
        witness = None
        if "witness" in top:
            witness = top["witness"].mapping({"etcd"}, required={"etcd"})["etcd"].address()
        sites_node = top["sites"]
        entries = sites_node.mapping(None)
        if len(entries) != 2:
            raise sites_node.fail(f"exactly two sites are supported, got {len(entries)}")
        sites: dict[str, Site] = {}
        for name, node in entries.items():
            if not _NAME_RE.fullmatch(name):
                raise sites_node.keys[name].fail(
                    f"site name {name!r}: lower-case letters, digits and '-'")
            fields = node.mapping({"workdir", "ray", "listen", "address", "etcd", "cert", "key"},
                                  required={"workdir", "listen", "etcd", "cert", "key"})
            ray = fields["ray"].text() if "ray" in fields else "local"
            if ray != "local" and not _ADDRESS_RE.fullmatch(ray):
                raise fields["ray"].fail(f"ray: 'local' or HOST:PORT, got {ray!r}")
            listen = fields["listen"].address()
            etcd_node = fields["etcd"]
            etcd = (tuple(n.address() for n in etcd_node.sequence()) if etcd_node.is_sequence
                    else (etcd_node.address(),))
            if not etcd:
                raise etcd_node.fail("etcd: at least one endpoint")
            sites[name] = Site(
                name=name, workdir=(base / fields["workdir"].text()).resolve(),
                ray=None if ray == "local" else ray, listen=listen,
                address=fields["address"].address() if "address" in fields else listen,
                etcd=etcd,
                security=LinkSecurity(ca=ca, cert=fields["cert"].file(base),
                                      key=fields["key"].file(base), token_file=token))
        workdirs = [s.workdir for s in sites.values()]
        if workdirs[0] == workdirs[1]:
            raise sites_node.fail("the two sites need workdirs of their own")
        primary = None
        if "primary" in top:
            primary = top["primary"].choice(tuple(sites))
        return cls(path=path, sites=sites, mode=mode, on_standby_loss=on_loss,
                   standby_timeout_s=timeout, lease_ttl_s=ttl, witness_etcd=witness,
                   primary=primary)

    def to_yaml(self) -> str:
        """The file again (paths absolute), e.g. for a drill's report."""
        doc: dict[str, Any] = {
            "mode": self.mode, "on_standby_loss": self.on_standby_loss,
            "standby_timeout_s": self.standby_timeout_s, "lease_ttl_s": self.lease_ttl_s,
            "security": {"ca": str(next(iter(self.sites.values())).security.ca),
                         "token_file": str(next(iter(self.sites.values())).security.token_file)},
            "sites": {n: {"workdir": str(s.workdir), "ray": s.ray or "local",
                          "listen": s.listen, "address": s.address, "etcd": list(s.etcd),
                          "cert": str(s.security.cert), "key": str(s.security.key)}
                      for n, s in self.sites.items()},
        }
        if self.witness_etcd:
            doc["witness"] = {"etcd": self.witness_etcd}
        if self.primary:
            doc["primary"] = self.primary
        return str(yaml.safe_dump(doc, sort_keys=False))


class _Node:
    """A YAML node with its line, and the checks a sites file needs."""

    def __init__(self, node: yaml.Node | None, source: str) -> None:
        self.node = node
        self.source = source
        self.keys: dict[str, _Node] = {}  # of a mapping, once read: where each key stands

    def fail(self, message: str) -> InvalidSites:
        line = self.node.start_mark.line + 1 if self.node is not None else None
        return InvalidSites(self.source, line, message)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)

    def mapping(self, allowed: set[str] | None, required: set[str] = frozenset()  # type: ignore[assignment]
                ) -> dict[str, _Node]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.fail("expected a mapping")
        out: dict[str, _Node] = {}
        for key, value in self.node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if not isinstance(name, str):
                raise _Node(key, self.source).fail("keys must be names")
            if allowed is not None and name not in allowed:
                raise _Node(key, self.source).fail(
                    f"unknown key {name!r} (expected one of: {', '.join(sorted(allowed))})")
            if name in out:
                raise _Node(key, self.source).fail(f"key {name!r} given twice")
            out[name] = _Node(value, self.source)
            self.keys[name] = _Node(key, self.source)
        missing = sorted(required - out.keys())
        if missing:
            raise self.fail(f"missing {', '.join(missing)}")
        return out

    def sequence(self) -> list[_Node]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.fail("expected a list")
        return [_Node(n, self.source) for n in self.node.value]

    def text(self) -> str:
        if not isinstance(self.node, yaml.ScalarNode) or not str(self.node.value).strip():
            raise self.fail("expected a non-empty value")
        return str(self.node.value).strip()

    def choice(self, options: tuple[str, ...]) -> Any:
        value = self.text()
        if value not in options:
            raise self.fail(f"{value!r}: expected one of {', '.join(options)}")
        return value

    def address(self) -> str:
        value = self.text()
        if not _ADDRESS_RE.fullmatch(value) or not 0 < int(value.rpartition(":")[2]) < 65536:
            raise self.fail(f"{value!r} is not HOST:PORT")
        return value

    def seconds(self, minimum: float = 0.0) -> float:
        try:
            value = float(self.text())
        except ValueError:
            raise self.fail(f"{self.text()!r} is not a number of seconds") from None
        if not math.isfinite(value) or value <= 0 or value < minimum:
            raise self.fail(f"{value:g}: a number of seconds > 0"
                            + (f" and >= {minimum:g}" if minimum else ""))
        return value

    def file(self, base: Path) -> Path:
        path = (base / self.text()).resolve()
        if not path.is_file():
            raise self.fail(f"no file {path}")
        return path
