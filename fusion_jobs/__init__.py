"""Fused jobs built on fusion-resilience: applications, not framework.

Each job here is written against the public API a user has (`resilience.pipeline`,
`resilience`, `checkpoint`), and is found by `resilience run JOB` the way a user's own
job is: through the ``resilience.jobs`` entry point group (pyproject.toml).

* `fusion_jobs.payments`: the reference payments job (streaming, online learning,
  serving in one job), its input contract, generator and independent checker;
* `fusion_jobs.keyed_sums`: a small generic job with a multi-input stateful stage.
"""
