"""Reports of chaos runs: the model, its JSON form, and a self-contained HTML page.

A `Report` is what one chaos run leaves behind: the faults it injected, the invariants and
steady-state checks it evaluated, the job's progress sampled during the run, and a journal
of everything that happened. JSON (`write_json` / `read_json`) is for machines, with an
exact round trip; HTML (`render_html` / `write_html`) is for people: one page that fetches
nothing, its charts drawn as inline SVG. The model and JSON live in `chaos._report_model`,
the page in `chaos._report_html`.
"""

from chaos._report_html import render_html, write_html
from chaos._report_model import (
    FORMAT,
    FORMAT_VERSION,
    FaultRecord,
    InvalidReport,
    InvariantResult,
    JournalEvent,
    Phase,
    Report,
    Sample,
    SteadyStateResult,
    read_json,
    write_json,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FaultRecord",
    "InvalidReport",
    "InvariantResult",
    "JournalEvent",
    "Phase",
    "Report",
    "Sample",
    "SteadyStateResult",
    "read_json",
    "render_html",
    "write_html",
    "write_json",
]
