"""Policies, runtime and CLI of fusion-resilience."""

from resilience._ray import apply_ray_env

# Ray reads these when it is first imported (ray_constants), so they must be set
# before anything imports ray: otherwise Ray binds the machine's external
# interface even when asked for 127.0.0.1. Existing values are respected.
apply_ray_env()
