"""The thresholds report: per class a PNG (precision/recall, and miss rate and false
rejects against the threshold, the chosen threshold marked) and one self-contained
HTML page (images inlined as base64). matplotlib is imported here only, lazily by
the caller, with the non-interactive Agg backend."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from calibration.thresholds import Curves, PartScores
from protocol.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from calibration.threshold_run import ThresholdRun

__all__ = ["render_report"]


def _png(part: PartScores, curve: Curves, threshold: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=90)
    pr, rates = fig.subplots(1, 2)
    pr.plot(curve.recall, curve.precision, color="tab:blue")
    pr.set_xlabel("recall (defective parts caught)")
    pr.set_ylabel("precision (rejected parts that are defective)")
    pr.set_xlim(0, 1.01)
    pr.set_ylim(0, 1.01)
    pr.set_title(f"{part.name}: precision / recall")
    rates.plot(curve.thresholds, curve.miss_rate, label="miss rate", color="tab:red")
    rates.plot(curve.thresholds, curve.false_reject_rate, label="false-reject rate",
               color="tab:orange")
    rates.axvline(threshold, color="black", linestyle="--", label=f"chosen {threshold:.4f}")
    rates.set_xlabel("score threshold")
    rates.set_ylabel("rate")
    rates.set_yscale("symlog", linthresh=0.01)
    rates.set_title(f"{part.name}: miss and false reject")
    rates.legend(loc="upper center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def render_report(report_dir: Path, run: ThresholdRun,
                  parts: Sequence[tuple[PartScores, Curves]], title: str) -> Path:
    """Write ``<class>.png`` per class and ``report.html``; returns the HTML path."""
    chosen = {t.name: t for t in run.thresholds}
    rows, figures = [], []
    for part, curve in parts:
        t = chosen[part.name]
        png = _png(part, curve, t.threshold)
        atomic_write_bytes(report_dir / f"{_slug(part.name)}.png", png)
        lo, hi = t.miss_rate_ci
        flo, fhi = t.false_reject_ci
        rows.append(
            f"<tr><td>{html.escape(t.name)}</td><td>{t.threshold:.4f}</td>"
            f"<td>{t.defective}</td><td>{t.misses} ({t.miss_rate:.2%}; 95% CI "
            f"{lo:.2%}-{hi:.2%})</td><td>{t.good}</td><td>{t.false_rejects} "
            f"({t.false_reject_rate:.2%}; 95% CI {flo:.2%}-{fhi:.2%})</td></tr>")
        data = base64.b64encode(png).decode("ascii")
        figures.append(f"<h2>{html.escape(part.name)}</h2>"
                       f'<img alt="{html.escape(part.name)} curves" '
                       f'src="data:image/png;base64,{data}">')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Target miss rate {run.target_miss_rate:g} on {run.parts} parts of split
{html.escape(run.split)}; {'one threshold per class' if run.per_class else
'one threshold for every class'}. A part is missed when it is defective and no score
is above the threshold; a false reject is a defect-free part with a score above it.</p>
<table><tr><th>class</th><th>threshold</th><th>defective parts</th><th>missed</th>
<th>good parts</th><th>false rejects</th></tr>
{''.join(rows)}</table>
{''.join(figures)}
</body></html>
"""
    path = report_dir / "report.html"
    atomic_write_text(path, page)
    return path
