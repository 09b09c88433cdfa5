"""The sites file: a valid one, and every mistake named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience import InvalidSites
from resilience.replication import Sites, make_pki

VALID = """\
mode: async
on_standby_loss: degrade
standby_timeout_s: 1.5
lease_ttl_s: 3
security: {ca: pki/ca.crt, token_file: pki/token}
sites:
  a:
    workdir: site-a
    listen: 127.0.0.1:7001
    address: 127.0.0.1:7101
    etcd: [127.0.0.1:2379, 127.0.0.1:2479]
    cert: pki/a.crt
    key: pki/a.key
  b:
    workdir: site-b
    ray: 127.0.0.1:6379
    listen: 127.0.0.1:7002
    etcd: 127.0.0.1:2479
    cert: pki/b.crt
    key: pki/b.key
witness: {etcd: 127.0.0.1:2579}
primary: b
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    make_pki(tmp_path / "pki", ["a", "b"])
    return tmp_path


def test_a_valid_file(base: Path) -> None:
    path = base / "sites.yaml"
    path.write_text(VALID)
    sites = Sites.load(path)
    a, b = sites.site("a"), sites.site("b")
    assert (a.workdir, a.ray, a.address, a.etcd_endpoint) == (
        (base / "site-a").resolve(), None, "127.0.0.1:7101", "127.0.0.1:2379,127.0.0.1:2479")
    assert (b.ray, b.address, b.etcd) == ("127.0.0.1:6379", "127.0.0.1:7002",
                                          ("127.0.0.1:2479",))
    config = sites.config_for("a")
    assert (config.peer, config.peer_address, config.mode, config.on_standby_loss,
            config.standby_timeout_s) == ("b", "127.0.0.1:7002", "async", "degrade", 1.5)
    assert sites.config_for("b", mode="sync").mode == "sync"
    assert sites.lease_ttl_s == 3
    assert (sites.primary, config.primary) == ("b", "b")
    again = base / "again.yaml"
    again.write_text(sites.to_yaml())
    assert Sites.load(again).sites == sites.sites


@pytest.mark.parametrize(("change", "line", "why"), [
    (("mode: async", "mode: eventually"), 1, "expected one of sync, async"),
    (("lease_ttl_s: 3", "lease_ttl_s: 1"), 4, ">= 2"),
    (("    listen: 127.0.0.1:7001", "    listen: nowhere"), 9, "is not HOST:PORT"),
    (("    cert: pki/a.crt", "    cert: pki/missing.crt"), 12, "no file"),
    (("    address: 127.0.0.1:7101", "    adress: 127.0.0.1:7101"), 10, "unknown key 'adress'"),
    (("  b:\n", "  B:\n"), 14, "site name 'B'"),
    (("    workdir: site-b", "    workdir: site-a"), 7, "workdirs of their own"),
    (("witness: {etcd: 127.0.0.1:2579}", "witness: {etcd: [1, 2]}"), 21, "expected a non-empty"),
    (("standby_timeout_s: 1.5", "standby_timeout_s: nan"), 3, "a number of seconds > 0"),
    (("primary: b", "primary: c"), 22, "expected one of a, b"),
])
def test_mistakes_name_their_line(base: Path, change: tuple[str, str], line: int,
                                  why: str) -> None:
    path = base / "sites.yaml"
    path.write_text(VALID.replace(*change))
    with pytest.raises(InvalidSites) as error:
        Sites.load(path)
    assert error.value.line == line, str(error.value)
    assert why in str(error.value)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_two_sites_exactly_and_a_missing_file(base: Path) -> None:
    path = base / "sites.yaml"
    text = VALID.replace("witness: {etcd: 127.0.0.1:2579}\nprimary: b\n", "") + \
        "  c: {workdir: c, listen: 127.0.0.1:7003, etcd: 127.0.0.1:2, cert: pki/a.crt, " \
        "key: pki/a.key}\n"
    path.write_text(text)
    with pytest.raises(InvalidSites, match="exactly two sites"):
        Sites.load(path)
    with pytest.raises(InvalidSites, match="cannot read the sites file"):
        Sites.load(base / "none.yaml")
    path.write_text("sites: [\n")
    with pytest.raises(InvalidSites, match="not valid YAML"):
        Sites.load(path)
