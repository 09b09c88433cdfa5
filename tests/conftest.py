"""Shared fixtures. etcd: one real server per session, a fresh client and key prefix per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest's default "prepend" import mode puts tests/ on sys.path for this file,
# and tests/resilience/ would then shadow the real `resilience` package as an
# empty namespace package. The project root first makes the real packages win,
# as `pythonpath = ["."]` in pyproject.toml would.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)

from hypothesis import settings  # noqa: E402

from resilience._embedded_etcd import EmbeddedEtcd  # noqa: E402 - after the sys.path fix
from resilience._etcd import EtcdClient  # noqa: E402

# CI (`.ci/run`) draws the same examples every run: a red CI is then always the change
# under test, and reproducible. Locally every run draws new ones and keeps failures in
# .hypothesis/ to replay first. Explicit @settings on a test still win.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """A real etcd shared by the session. Do not pause or kill it: start your own for that."""
    with EmbeddedEtcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    """A key namespace unique to the test ("/test-<hex>"), removed by `etcd_client`."""
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def etcd_client(etcd_server: EmbeddedEtcd, etcd_prefix: str) -> Iterator[EtcdClient]:
    """A client of the session's etcd; keys under `etcd_prefix` are deleted afterwards."""
    with EtcdClient(etcd_server.endpoint, timeout_s=5.0) as client:
        yield client
        client.delete_prefix(etcd_prefix + "/")


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Ray on 127.0.0.1 for the whole session (ray.init costs ~5 s here).

    Yields the GCS address. Stopped with ray.shutdown(), never `ray stop`.
    """
    from resilience._ray import ray_session

    with ray_session(num_cpus=2) as session:
        yield session.address
