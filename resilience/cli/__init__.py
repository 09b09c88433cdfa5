"""The `resilience` command line (entry point `resilience = resilience.cli:main`).

Every user mistake ends with one line on stderr and an exit code (`EXIT_CODES`), never
a traceback. Jobs are found by name through the ``resilience.jobs`` entry point group
(`resilience.pipeline.find_job`); other packages add sub-commands through the
``resilience.commands`` group (the chaos harness, the payments job's generator).
"""

from resilience.cli._main import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
