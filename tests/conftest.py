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

from resilience.coordination._client import EtcdClient  # noqa: E402
from resilience.coordination._embedded import EmbeddedEtcd  # noqa: E402 - after the sys.path fix

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


DRILL_SOURCES = Path(__file__).resolve().parents[1] / "java" / "test"


def build_drill_jar() -> Path | None:
    """The test-only Java classes (java/test: failures on demand), built against the
    project's jar into build/java/fusion-resilience-tests.jar; None without a JDK."""
    import subprocess
    import tempfile

    from resilience._java._bridge import ensure_java_built, java_unavailable_reason, ray_dist_jar

    if java_unavailable_reason() is not None:
        return None
    product = ensure_java_built()
    jar = product.with_name("fusion-resilience-tests.jar")
    sources = sorted(DRILL_SOURCES.rglob("*.java"))
    if jar.exists() and all(jar.stat().st_mtime >= p.stat().st_mtime
                            for p in [*sources, product]):
        return jar
    with tempfile.TemporaryDirectory(dir=jar.parent) as tmp:
        classpath = f"{product}:{ray_dist_jar()}"
        subprocess.run(["javac", "--release", "17", "-Xlint:all", "-Werror", "-cp", classpath,
                        "-d", tmp, *map(str, sources)], check=True, capture_output=True)
        staged = Path(tmp) / jar.name
        subprocess.run(["jar", "--create", "--file", str(staged), "-C", tmp, "io"],
                       check=True, capture_output=True)
        os.replace(staged, jar)
    return jar


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Ray on 127.0.0.1 for the whole session (ray.init costs ~5 s here).

    Yields the GCS address. Stopped with ray.shutdown(), never `ray stop`. With a JDK,
    Java actors of the project's jar and of the tests' drill jar can run in it.
    """
    from resilience._java._bridge import java_code_search_path_if_available
    from resilience._ray import ray_session

    drill = build_drill_jar()
    search = [*java_code_search_path_if_available(), *([str(drill)] if drill else [])]
    with ray_session(num_cpus=2, code_search_path=search) as session:
        yield session.address
