"""Serving a model on Ray Serve: replicas that follow the registry's ``serving`` alias.

`model_app(...)` builds a Serve application of `replicas` replicas of `ModelServer`. Each
replica holds an `AliasFollower`, so a move of the alias (the job's gate rolling back, an
operator's ``resilience models rollback``) reaches every replica within one poll, and a
replica that is restarted (SIGKILLed, moved) loads whatever the alias names then. HTTP:
``POST <route>/score`` with a JSON object (for the payments fraud model ``{"from", "to",
"amount"}``) answers ``{"model", "version", "score"}``; ``GET <route>/version`` says which
version the replica holds. A Python handle's ``score(payload)`` answers the same.

What a payload means is the application's: `scorer(weights, payload)` returns the score
(a probability) or raises `ValueError` for a payload it cannot score (HTTP 400).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from ray import serve

from resilience.serving._follower import AliasFollower

__all__ = ["ModelServer", "model_app"]

Scorer = Callable[[list[float], Mapping[str, Any]], float]


class ModelServer:
    """One replica: a follower of the alias, and the application's scorer."""

    def __init__(self, etcd: str, job_id: str, model: str, scorer: Scorer,
                 poll_s: float = 0.05) -> None:
        self.scorer = scorer
        self.follower = AliasFollower(etcd, job_id, model, poll_s=poll_s)

    def score(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        current = self.follower.current  # one read: version and weights together
        score = float(self.scorer(current.weights, payload))
        return {"model": current.model, "version": current.version, "score": score}

    def version(self) -> dict[str, Any]:
        return {**self.follower.status(), "pid": os.getpid()}

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/version"):
            return JSONResponse(self.version())
        if request.method != "POST" or not path.endswith("/score"):
            return JSONResponse({"error": "POST .../score or GET .../version"}, status_code=404)
        try:
            payload = json.loads(await request.body())
        except ValueError as e:
            return JSONResponse({"error": f"not JSON: {e}"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            return JSONResponse(self.score(payload))
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)


def model_app(etcd: str, job_id: str, model: str, scorer: Scorer, *, replicas: int = 2,
              poll_s: float = 0.05) -> Any:
    """The Serve application of `model`: `replicas` `ModelServer`s."""
    deployment = serve.deployment(name=f"model-{model}", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": 0},
                                  max_ongoing_requests=64)(ModelServer)
    return deployment.bind(etcd, job_id, model, scorer, poll_s)
