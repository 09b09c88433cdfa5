"""Fixtures for the Java actors: the built jar, and actors on the session's Ray.

The Java tests share the session's one Ray (`ray_local`, tests/conftest.py), which must
have been started with the project's jar on its ``code_search_path``
(`resilience._java.java_code_search_path_if_available`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience._java._bridge import (
    ensure_java_built,
    java_actor_class,
    java_unavailable_reason,
    session_code_search_path,
)

ActorFactory = Callable[..., Any]


@pytest.fixture(autouse=True)
def _java_required() -> None:
    """Every test here needs a JDK: without one it is skipped, saying why (make test -rs)."""
    reason = java_unavailable_reason()
    if reason is not None:
        pytest.skip(f"Java parts skipped: {reason}")


@pytest.fixture(scope="session")
def java_jar() -> Path:
    """The project's jar, built if needed; the test is skipped (with why) without a JDK."""
    reason = java_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return ensure_java_built()


@pytest.fixture
def java_actors(ray_local: str, java_jar: Path) -> Iterator[ActorFactory]:
    """``make(class_name, *args, **ray_options)`` creates a Java actor; all are killed after.

    Actors get ``max_restarts=-1`` unless told otherwise.
    """
    import ray

    search_path = session_code_search_path()
    if search_path is not None and str(java_jar) not in search_path:
        pytest.fail(
            f"the session's Ray was started without {java_jar} on its code_search_path "
            f"({search_path}): tests/conftest.py must start ray_local with "
            f"ray_session(num_cpus=2, code_search_path=java_code_search_path_if_available())"
        )
    created: list[Any] = []

    def make(class_name: str, *args: Any, **options: Any) -> Any:
        options.setdefault("max_restarts", -1)
        handle = java_actor_class(class_name).options(**options).remote(*args)
        created.append(handle)
        return handle

    yield make
    for handle in created:
        ray.kill(handle, no_restart=True)
