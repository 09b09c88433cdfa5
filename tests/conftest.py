"""Shared fixtures. etcd: one real server per session, a fresh client and key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from resilience._embedded_etcd import EmbeddedEtcd
from resilience._etcd import EtcdClient


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
