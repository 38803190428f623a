"""The scenario's report: a JSON summary and one self-contained HTML page.

Per line, a timeline (30 s buckets) of yield, defect rate, uninspected parts and the
active model version from the line's own store, the drift statistic per window from
the cloud, the step markers and each step's delay; mAP50 of the parent and the new
model on the variant's and the original product's holdout (`lineguard eval` on 200
linesim parts, seed 99); and the checks of issue 16 with their numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineguard.fleet_demo.fleet import DEMO_BUNDLE, SITE, Fleet
from lineguard.fleet_demo.procs import lineguard_argv

if TYPE_CHECKING:
    from lineguard.fleet_demo.scenario import ScenarioOptions

logger = logging.getLogger(__name__)

BUCKET_S = 30.0
ALERT_WITHIN_FRAMES = 300
MIN_VARIANT_MAP50 = 0.60
MAX_ORIGINAL_DROP = 0.02
MAX_UNINSPECTED_RATE = 0.02


def _ro(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)


def line_timeline(store: Path) -> list[dict[str, Any]]:
    con = _ro(store)
    try:
        rows = con.execute(
            "SELECT CAST(judged_at / ? AS INTEGER) AS b, SUM(verdict = 'pass'),"
            " SUM(verdict = 'fail'), SUM(verdict = 'uninspected'), MAX(model_version),"
            " MIN(judged_at) FROM inspections GROUP BY b ORDER BY b", (BUCKET_S,)).fetchall()
    finally:
        con.close()
    out = []
    for _, npass, nfail, nun, model, at in rows:
        judged = (npass or 0) + (nfail or 0)
        out.append({"at_s": at, "pass": npass or 0, "fail": nfail or 0,
                    "uninspected": nun or 0, "model_version": model,
                    "yield": (npass or 0) / judged if judged else None,
                    "defect_rate": (nfail or 0) / judged if judged else None})
    return out


def verdict_checks(store: Path) -> dict[str, Any]:
    """One verdict per frame (frame ids unique, part ids without gaps or repeats)."""
    con = _ro(store)
    try:
        total, distinct_frames, distinct_parts, lo, hi = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT frame_id), COUNT(DISTINCT part_id),"
            " MIN(CAST(part_id AS INTEGER)), MAX(CAST(part_id AS INTEGER))"
            " FROM inspections").fetchone()
        reasons = dict(con.execute("SELECT reason, COUNT(*) FROM inspections WHERE"
                                   " verdict = 'uninspected' GROUP BY reason").fetchall())
        fails = [r[0] for r in con.execute(
            "SELECT frame_id FROM inspections WHERE verdict = 'fail'")]
        last = con.execute("SELECT MAX(judged_at) FROM inspections").fetchone()[0]
        late = {r[0] for r in con.execute(
            "SELECT frame_id FROM inspections WHERE verdict = 'fail' AND judged_at > ?",
            ((last or 0) - 15.0,))}
    finally:
        con.close()
    span = (hi - lo + 1) if total else 0
    return {"frames": total, "distinct_frames": distinct_frames,
            "distinct_parts": distinct_parts, "part_span": span,
            "uninspected": reasons, "fail_frames": fails, "late_fails": sorted(late)}


def fleet_defect_events(database_url: str, line: str) -> dict[str, int]:
    import sqlalchemy as sa  # the report only: the demo itself never opens the database

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT frame_id, COUNT(*) FROM defect_events WHERE site = :s AND"
                " line = :l GROUP BY frame_id"), {"s": SITE, "l": line}).fetchall()
    finally:
        engine.dispose()
    return {str(f): int(n) for f, n in rows}


def evaluate(fleet: Fleet, bundle: Path, variant: bool, parts: int, seed: int) -> float:
    data = fleet.dir / "holdouts" / ("ribbed" if variant else "original")
    if not (data / "data.yaml").exists():
        fleet.sup.run("linesim export holdout", lineguard_argv(
            "linesim", "export", str(data), "--train", "1", "--val", str(parts),
            "--seed", str(seed), *(["--drift", "variant=ribbed"] if variant else [])))
    out = subprocess.run(lineguard_argv("eval", str(bundle), str(data / "data.yaml"),
                                        "--json"), capture_output=True, text=True,
                         env=fleet.sup.env, timeout=900, check=True).stdout
    return float(json.loads(out)["map50"])


def _items(got: Any, *keys: str) -> list[dict[str, Any]]:
    if isinstance(got, dict):
        for k in keys:
            if isinstance(got.get(k), list):
                return list(got[k])
        return []
    return list(got or [])


def collect_report(fleet: Fleet, marks: list[dict[str, Any]], result: dict[str, Any],
                   opts: ScenarioOptions, *, evaluate_models: bool = True) -> dict[str, Any]:
    lines = [s.line for s in fleet.opts.lines]
    cloud = result.get("cloud", {})
    report: dict[str, Any] = {"result": {k: v for k, v in result.items() if k != "cloud"},
                              "steps": marks, "lines": {}, "checks": [], "map50": {}}
    prev = marks[0]["at_s"] if marks else 0.0
    for m in marks:
        m["delay_s"] = round(m["at_s"] - prev, 1)
        prev = m["at_s"]
    checks = report["checks"]

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    for ln in lines:
        store = fleet.store_path(ln)
        v = verdict_checks(store)
        windows = _items(cloud.get(f"windows:{ln}"), "windows", "items")
        report["lines"][ln] = {"timeline": line_timeline(store), "drift": windows,
                               "verdicts": {k: v[k] for k in v if k not in (
                                   "fail_frames", "late_fails")}}
        check(f"{ln}: one verdict per frame",
              v["frames"] == v["distinct_frames"] == v["distinct_parts"] == v["part_span"],
              f"{v['frames']} frames, {v['distinct_parts']} distinct parts over a span of "
              f"{v['part_span']}")
        un = sum(v["uninspected"].values())
        check(f"{ln}: uninspected within the deadline rules",
              un <= MAX_UNINSPECTED_RATE * max(1, v["frames"]),
              f"{un} of {v['frames']} ({v['uninspected'] or 'none'})")
        try:
            events = fleet_defect_events(fleet.database_url, ln)
            dup = {f: n for f, n in events.items() if n != 1}
            missing = [f for f in v["fail_frames"] if f not in events
                       and f not in v["late_fails"]]
            check(f"{ln}: fleet store holds every defect event once",
                  not dup and not missing,
                  f"{len(events)} events for {len(v['fail_frames'])} failed parts; "
                  f"duplicates {len(dup)}, missing {len(missing)} (the last 15 s before "
                  "the stop wait in the outbox and are not counted)")
        except Exception as e:  # noqa: BLE001 (the report says what it could not read)
            check(f"{ln}: fleet store holds every defect event once", False, str(e))
    # alert timing
    step_at = {m["step"]: m["at_s"] for m in marks}
    l1, l2 = lines
    if "alert" in step_at:
        con = _ro(fleet.store_path(l1))
        try:
            n = con.execute("SELECT COUNT(*) FROM inspections WHERE CAST(part_id AS INTEGER)"
                            " >= ? AND judged_at <= ?",
                            (opts.onset_part, step_at["alert"])).fetchone()[0]
        finally:
            con.close()
        report["alert_frames_after_onset"] = n
        check("alert within 300 frames of the onset", n <= ALERT_WITHIN_FRAMES,
              f"{n} frames of line-1 after the onset")
    else:
        check("alert within 300 frames of the onset", False, "no alert")
    alerts2 = _items(cloud.get(f"alerts:{l2}"), "alerts", "items")
    check("no alert on line-2", not alerts2, f"{len(alerts2)} alerts")
    # accuracy
    cand = result.get("candidate")
    new_bundle = (fleet.cloud_dir / "registry" / "demo" / cand.split("@")[1] / "bundle"
                  if cand else None)
    try:
        for name, bundle in (("parent", DEMO_BUNDLE), ("new", new_bundle)):
            if bundle is None or not bundle.exists() or not evaluate_models:
                continue
            report["map50"][name] = {
                "variant": evaluate(fleet, bundle, True, opts.eval_parts, opts.eval_seed),
                "original": evaluate(fleet, bundle, False, opts.eval_parts, opts.eval_seed)}
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        report["map50"]["error"] = str(e)
    mp = report["map50"]
    running = result.get("running_after", {})
    if opts.sabotage:
        released = [f"{r.get('model')}@{r.get('version')}" for r in
                    _items(cloud.get("releases"), "releases", "items")]
        check("sabotage: the gate refuses the candidate", result.get("outcome") == "refused",
              "; ".join((result.get("gate") or {}).get("reasons", [])) or str(
                  result.get("outcome")))
        check("sabotage: nothing published", cand is None or cand not in released,
              f"published: {', '.join(released) or 'none'}")
        check("sabotage: both lines keep their model",
              all(v == 1 for v in running.values()) and len(running) == 2, str(running))
    else:
        check("new model promoted to both lines", result.get("outcome") == "promoted" and
              all(v is not None and cand and v == int(cand.split("@")[1])
                  for v in running.values()), str(running))
        if "new" in mp and "parent" in mp:
            check("new model mAP50 on the variant >= 0.60",
                  mp["new"]["variant"] >= MIN_VARIANT_MAP50,
                  f"new {mp['new']['variant']:.3f} (parent {mp['parent']['variant']:.3f})")
            check("new model on the original product no more than 0.02 below the parent",
                  mp["new"]["original"] >= mp["parent"]["original"] - MAX_ORIGINAL_DROP,
                  f"new {mp['new']['original']:.3f}, parent {mp['parent']['original']:.3f}")
        else:
            check("mAP50 measured", False, str(mp.get("error", "no new model")))
    return report


# ---------------------------------------------------------------------- rendering
def _figure_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = list(report["lines"])
    fig, axes = plt.subplots(4, len(lines), figsize=(6 * len(lines), 9), sharex=True,
                             squeeze=False)
    t0 = min((p["at_s"] for ln in lines for p in report["lines"][ln]["timeline"]),
             default=0.0)
    for col, ln in enumerate(lines):
        tl = report["lines"][ln]["timeline"]
        ts = [(p["at_s"] - t0) / 60 for p in tl]
        ax = axes[0][col]
        ax.plot(ts, [p["yield"] for p in tl], label="yield")
        ax.plot(ts, [p["defect_rate"] for p in tl], label="defect rate")
        ax.set_title(ln)
        ax.legend(loc="lower left", fontsize=7)
        ax.set_ylim(0, 1)
        drift = report["lines"][ln]["drift"]
        dt = [(w.get("window_end_ms", 0) / 1000 - t0) / 60 for w in drift]
        axes[1][col].plot(dt, [w.get("statistic") or 0.0 for w in drift], ".-",
                          color="tab:purple")
        axes[1][col].set_ylabel("drift statistic")
        axes[2][col].bar(ts, [p["uninspected"] for p in tl], width=BUCKET_S / 60,
                         color="tab:red")
        axes[2][col].set_ylabel("uninspected")
        axes[2][col].set_ylim(0, max([1, *(p["uninspected"] for p in tl)]) * 1.1)
        axes[3][col].step(ts, [p["model_version"] for p in tl], where="post")
        axes[3][col].set_ylabel("model version")
        axes[3][col].set_xlabel("minutes")
        last_x, level = -1e9, 0
        for m in report["steps"]:
            if m["line"] not in (None, ln):
                continue
            x = (m["at_s"] - t0) / 60
            for r in range(4):
                axes[r][col].axvline(x, color="grey", lw=0.7, ls="--")
            # steps seconds apart: their labels climb instead of overprinting
            level = level + 1 if x - last_x < 0.25 else 0
            last_x = x
            axes[0][col].annotate(m["step"], (x, 0.02 + 0.33 * (level % 3)), rotation=90,
                                  fontsize=7, va="bottom")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    js = out_dir / "report.json"
    summary = {k: v for k, v in report.items()}
    js.write_text(json.dumps(summary, indent=1, default=str), "utf-8")
    png = _figure_png(report)
    (out_dir / "report.png").write_bytes(png)
    e = html.escape
    steps = "".join(f"<tr><td>{e(m['step'])}</td><td>{e(m['line'] or 'fleet')}</td>"
                    f"<td>{m['delay_s']}</td><td>{e(m['detail'])}</td></tr>"
                    for m in report["steps"])
    checks = "".join(f"<tr class={'ok' if c['ok'] else 'bad'}><td>{'ok' if c['ok'] else 'FAIL'}"
                     f"</td><td>{e(c['name'])}</td><td>{e(c['detail'])}</td></tr>"
                     for c in report["checks"])
    mp = report["map50"]
    maps = "".join(f"<tr><td>{e(k)}</td><td>{v['variant']:.3f}</td><td>{v['original']:.3f}"
                   f"</td></tr>" for k, v in mp.items() if isinstance(v, dict))
    res = report["result"]
    why = ""
    if res.get("outcome") == "refused":
        why = ("<p class=bad><b>The gate refused the candidate</b>: "
               + e("; ".join((res.get("gate") or {}).get("reasons", []))) + "</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>lineguard fleet demo: variant scenario</title><style>
body{{font-family:sans-serif;margin:2em;max-width:80em}} td,th{{padding:2px 8px;
text-align:left}} .ok td:first-child{{color:green}} .bad,.bad td:first-child{{color:#b00}}
</style></head><body><h1>Fleet demo: a new product variant on line-1</h1>
<p>Outcome: <b>{e(str(res.get('outcome')))}</b>; parent {e(str(res.get('parent')))},
candidate {e(str(res.get('candidate')))}{', sabotaged labels' if res.get('sabotage') else ''}.
{e(str(res.get('error', '')))}</p>{why}
<h2>Checks</h2><table>{checks}</table>
<h2>Steps (delay since the previous step, s)</h2>
<table><tr><th>step</th><th>line</th><th>delay</th><th>detail</th></tr>{steps}</table>
<h2>mAP50 (lineguard eval, 200 linesim parts, seed 99)</h2>
<table><tr><th>model</th><th>ribbed (variant)</th><th>original products</th></tr>{maps}
</table><h2>Timeline</h2>
<img alt="timeline per line" src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>"""
    out = out_dir / "report.html"
    out.write_text(page, "utf-8")
    return out, js
