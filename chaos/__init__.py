"""Chaos-injection harness. Uses only the public names of `checkpoint` and `resilience`."""
