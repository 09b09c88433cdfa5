"""Policies, runtime and CLI of fusion-resilience."""
