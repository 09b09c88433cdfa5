"""The payments reference job: money transfers applied exactly once to a ledger.

Input is JSON Lines, one transfer a line: ``{"id": str, "from": str, "to": str,
"amount": int}`` (amount in cents, > 0; extra fields such as ``"ts"`` are ignored).
Invalid lines and replays of an already-seen id go to ``dead_letter.jsonl``; every
other transfer becomes a debit and a credit posting in ``ledger.sqlite``.

``generator`` writes such inputs deterministically and holds the fraud rule the
learning stage uses as its label oracle; ``fusion_jobs.payments.checker`` verifies a run's
output without sharing any code with the job. This module imports nothing so that
importing the package stays cheap (Ray workers import it on start).
"""
