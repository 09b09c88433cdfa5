"""The HTML page of a drill report: commit rate per site over time, the fault and the
takeover marked, then the figures and the timeline. Self-contained (inline SVG)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos._report_html import _CSS, _SVG_FONT, _esc, _nice_ceiling, _nice_ticks, _Scale
from chaos._report_model import write_atomically

__all__ = ["render_drill_html", "write_drill_html"]

_W, _H, _L, _R, _T, _B = 960, 320, 70, 24, 30, 46
_COLOURS = {"a": "#1f77b4", "b": "#d62728"}
_MARKS = {"fault": "#000000", "takeover": "#2ca02c", "first_commit": "#9467bd",
          "failback": "#ff7f0e", "heal": "#8c564b", "restart": "#7f7f7f"}
_BIN_S = 0.5


def _rates(commits: Sequence[dict[str, Any]], t0: float) -> list[tuple[float, float]]:
    """Committed events per second in bins of `_BIN_S`, from a site's commit log."""
    bins: dict[int, float] = {}
    for c in commits:
        key = int((float(c["committed_at"]) - t0) / _BIN_S)
        bins[key] = bins.get(key, 0.0) + float(c["rows"]) / 2 / _BIN_S
    if not bins:
        return []
    lo, hi = min(bins), max(bins)
    return [(k * _BIN_S, bins.get(k, 0.0)) for k in range(lo, hi + 1)]


def _plot(report: dict[str, Any]) -> str:
    t0 = float(report["t0"])
    series = {site: _rates(commits, t0) for site, commits in report["commits"].items()}
    marks = [e for e in report["timeline"] if e["kind"] in _MARKS]
    t_hi = max([p[0] for s in series.values() for p in s] + [m["t"] for m in marks] + [1.0])
    t_lo = min([p[0] for s in series.values() for p in s] + [m["t"] for m in marks] + [0.0])
    y_hi = _nice_ceiling(max([p[1] for s in series.values() for p in s] + [1.0]) * 1.05)
    x = _Scale(t_lo, t_hi, _L, _W - _R)
    y = _Scale(0.0, y_hi, _H - _B, _T)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
           f'viewBox="0 0 {_W} {_H}" role="img" {_SVG_FONT}>',
           "<title>Committed events per second at each site, with the fault and the takeover"
           "</title>",
           f'<rect x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}" '
           'fill="none" stroke="#ccc"/>']
    ticks, _step = _nice_ticks(t_lo, t_hi)
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_H - _B}" y2="{_H - _B + 4}" '
                   f'stroke="#666"/><text x="{x(t):.1f}" y="{_H - _B + 16}" '
                   f'text-anchor="middle">{t:g}</text>')
    yticks, _ = _nice_ticks(0.0, y_hi, 5)
    for v in yticks:
        out.append(f'<line x1="{_L - 4}" x2="{_W - _R}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#eee"/><text x="{_L - 6}" y="{y(v) + 4:.1f}" '
                   f'text-anchor="end">{v:,.0f}</text>')
    out.append(f'<text x="{(_L + _W - _R) / 2}" y="{_H - 8}" text-anchor="middle">seconds since '
               'the drill started</text>')
    out.append(f'<text x="14" y="{(_T + _H - _B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(_T + _H - _B) / 2})">events committed per s</text>')
    for site, points in series.items():
        if points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
            out.append(f'<polyline fill="none" stroke="{_COLOURS.get(site, "#333")}" '
                       f'stroke-width="1.6" points="{path}"><title>site {_esc(site)}</title>'
                       "</polyline>")
    for i, m in enumerate(marks):
        colour = _MARKS[m["kind"]]
        out.append(f'<line x1="{x(m["t"]):.1f}" x2="{x(m["t"]):.1f}" y1="{_T}" y2="{_H - _B}" '
                   f'stroke="{colour}" stroke-dasharray="4 3"><title>{_esc(m["t"])}s '
                   f'{_esc(m["kind"])}: {_esc(m["message"])}</title></line>')
        out.append(f'<text x="{x(m["t"]) + 3:.1f}" y="{_T + 12 + 12 * (i % 3)}" '
                   f'fill="{colour}">{_esc(m["kind"])}</text>')
    legend_x = _L + 8
    for site, colour in _COLOURS.items():
        out.append(f'<rect x="{legend_x}" y="{_T + 4}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{legend_x + 14}" y="{_T + 13}">site {site}</text>')
        legend_x += 70
    out.append("</svg>")
    return "".join(out)


def _row(name: str, value: Any) -> str:
    return f"<tr><th>{_esc(name)}</th><td>{_esc(value)}</td></tr>"


def render_drill_html(report: dict[str, Any]) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    split = report["rto_split"]
    fp = report["fingerprints"]
    rows = [
        _row("fault", f"{report['fault']} ({report['mode']} replication, on standby loss "
                      f"{report['on_standby_loss']})"),
        _row("RTO, fault to the first commit at the new site", f"{report['rto_seconds']:.3f} s"),
        _row("  detection (fault to the new site's leadership)", f"{split['detection_s']:.3f} s"),
        _row("  restore", f"{split['restore_s']:.3f} s"),
        _row("  first commit after the restore", f"{split['first_commit_after_restore_s']:.3f} s"),
        _row("RPO: events lost", report["rpo_events"]),
        _row("duplicated events", report["duplicates"]),
        _row("replication lag at the fault", report["lag_at_fault"]),
        _row("exactly once (active site's ledger, independent checker)",
             report["exactly_once"]),
        _row("active site at the end", report["active_site"]),
        _row(f"ledgers at cutover checkpoint {fp['checkpoint_id']}",
             "identical" if fp["sink_match"] else "DIFFERENT"),
        _row(f"state at cutover checkpoint {fp['checkpoint_id']}",
             "identical" if fp["state_match"] else "DIFFERENT"),
    ]
    if report.get("failback_result"):
        rows.append(_row("failback RTO", f"{report['failback_result']['rto_seconds']:.3f} s"))
    failures = "".join(f"<li>{_esc(f)}</li>" for f in report["failures"])
    timeline = "".join(f"<tr><td>{e['t']:.2f}</td><td>{_esc(e['kind'])}</td>"
                       f"<td>{_esc(e['message'])}</td></tr>" for e in report["timeline"])
    epochs = "".join(f"<tr><td>{_esc(e['epoch'])}</td><td>{_esc(e['site'])}</td>"
                     f"<td>{_esc(e['kind'])}</td><td>{_esc(e['from_site'])}</td>"
                     f"<td>{_esc(e['restored_from'])}</td></tr>" for e in report["epochs"])
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{verdict}: drill {_esc(report['fault'])} ({_esc(report['mode'])})</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Drill {_esc(report['fault'])}, {_esc(report['mode'])}: {verdict}</h1>",
        f"<ul>{failures}</ul>" if failures else "",
        "<h2>Commit rate per site</h2>", f"<figure>{_plot(report)}</figure>",
        f"<h2>Figures</h2><table>{''.join(rows)}</table>",
        "<h2>Reigns</h2><table><tr><th>epoch</th><th>site</th><th>kind</th><th>from</th>"
        f"<th>restored from checkpoint</th></tr>{epochs}</table>",
        "<h2>Timeline</h2><table><tr><th>s</th><th>what</th><th>detail</th></tr>"
        f"{timeline}</table>",
        f"<p>job {_esc(report['job_id'])}, input {_esc(report['input'])}, ledger "
        f"{_esc(report['ledger'])}</p>",
        "</main></body></html>",
    ]) + "\n"


def write_drill_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    return write_atomically(path, render_drill_html(report))
