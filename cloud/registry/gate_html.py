"""The gate report as one self-contained HTML page: the decision and why, the
comparison per held-out set, a per-class table and the PR curves as PNGs embedded in
base64 (matplotlib, imported lazily, Agg backend)."""

from __future__ import annotations

import base64
import html
import io

from cloud.registry.gate_report import GateReport, PrCurve, SetResult

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.pass{color:#176f2c}.fail{color:#b00020}.verdict{font-size:1.4em;font-weight:bold}
img{max-width:100%}
"""


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(candidate: float | None, parent: float | None) -> str:
    if candidate is None or parent is None:
        return "-"
    return f"{(candidate - parent) * 100:+.1f} pt"


def _curves_png(curves: list[PrCurve], title: str) -> str | None:
    """The set's PR curves drawn on one figure; base64 PNG, or None without curves."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=90)
    ax = fig.add_subplot()
    for curve in curves:
        ax.plot(curve.recall, curve.precision,
                linestyle="-" if curve.model == "candidate" else "--",
                label=f"{curve.model}: {curve.class_name}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"PR curves (IoU 0.5): {title}")
    ax.legend(fontsize="small", ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _set_section(s: SetResult) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c.name)}</td><td>{c.instances}</td>"
        f"<td>{_num(c.candidate_ap50)}</td><td>{_num(c.parent_ap50)}</td>"
        f"<td>{_delta(c.candidate_ap50, c.parent_ap50)}</td>"
        f"<td>{_num(c.candidate_recall)}</td><td>{_num(c.parent_recall)}</td>"
        f"<td>{_delta(c.candidate_recall, c.parent_recall)}</td></tr>"
        for c in s.classes)
    png = _curves_png(s.curves, s.title)
    picture = (f'<img alt="PR curves on {e(s.dataset)}" src="data:image/png;base64,{png}">'
               if png else "<p>(no PR curves recorded)</p>")
    return (
        f"<h2>{e(s.title)}: {e(s.dataset)} ({s.images} images)</h2>"
        "<table><tr><th></th><th>candidate</th><th>parent</th><th>change</th></tr>"
        f"<tr><td>mAP50</td><td>{_num(s.candidate_map50)}</td><td>{_num(s.parent_map50)}</td>"
        f"<td>{_delta(s.candidate_map50, s.parent_map50)}</td></tr>"
        f"<tr><td>mAP50-95</td><td>{_num(s.candidate_map50_95)}</td>"
        f"<td>{_num(s.parent_map50_95)}</td>"
        f"<td>{_delta(s.candidate_map50_95, s.parent_map50_95)}</td></tr></table>"
        "<table><tr><th>class</th><th>instances</th><th>AP50 candidate</th><th>AP50 parent</th>"
        "<th>change</th><th>recall candidate</th><th>recall parent</th><th>change</th></tr>"
        f"{rows}</table>{picture}"
    )


def render_gate_html(report: GateReport) -> str:
    """The report as a standalone HTML page (no external resources)."""
    e = html.escape
    verdict = ('<p class="verdict pass">PASSED</p>' if report.passed
               else '<p class="verdict fail">REFUSED</p>')
    reasons = ("<ul>" + "".join(f"<li>{e(r)}</li>" for r in report.reasons) + "</ul>"
               if report.reasons else "<p>Every check passed.</p>")
    checks = "".join(
        f'<tr><td>{e(c.rule)}</td><td class="{"pass" if c.passed else "fail"}">'
        f'{"pass" if c.passed else "FAIL"}</td><td style="text-align:left">{e(c.detail)}</td></tr>'
        for c in report.checks)
    latency = (f"{report.latency_batch1_ms:.1f} ms (budget {_num(report.latency_budget_ms, 1)} ms)"
               if report.latency_batch1_ms is not None else "not measured")
    settings = ", ".join(f"{e(k)} = {v:g}" for k, v in sorted(report.settings.items()))
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>Gate: {e(report.model)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Validation gate: {e(report.model)}</h1>"
        f"<p>parent: {e(report.parent or 'none')}; {e(report.created_at.isoformat())}</p>"
        f"{verdict}{reasons}"
        "<h2>Checks</h2><table><tr><th>rule</th><th>result</th><th>detail</th></tr>"
        f"{checks}</table>"
        f"<p>Batch-1 latency: {latency}, measured on {e(report.measured_on)}.</p>"
        f"<p>Settings: {settings}</p>"
        + "".join(_set_section(s) for s in report.sets)
        + "</body></html>\n"
    )
