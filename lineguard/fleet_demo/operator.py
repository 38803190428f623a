"""The simulated operator: labels line frames through the panel's own HTTP API, from
linesim's ground truth, with a configurable error rate (or, sabotaged, shuffled labels).

For each frame whose image the line kept: every detection that matches a true defect
(same class, IoU >= 0.5) is confirmed, every other one rejected, and every true defect
no detection matched is marked `missed` with its class and box. With probability
`error_rate` a label is wrong (a confirm becomes a reject, a missed defect is left out).
Sabotage: every `missed` label gets a random class and a box moved elsewhere, and every
detection is rejected, so the labels say nothing true about the parts.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import random
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linesim.config import CLASSES, Drift, LineConfig
from linesim.line import render

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class LabelStats:
    frames: int = 0
    labelled_frames: int = 0
    """Frames that got at least one label (a clean part nothing was found on gets none)."""
    confirmed: int = 0
    rejected: int = 0
    missed: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)


class PanelClient:
    """A logged-in panel session (cookie + CSRF token), plain urllib."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        body = urllib.parse.urlencode({"username": user, "password": password,
                                       "next": "/live"}).encode()
        self.opener.open(urllib.request.Request(f"{self.base}/login", data=body),
                         timeout=10).read()
        self.csrf = str(self.get("/api/session")["csrf_token"])

    def get(self, path: str) -> Any:
        with self.opener.open(f"{self.base}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        req = urllib.request.Request(f"{self.base}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json",
                                              "X-CSRF-Token": self.csrf}, method="POST")
        with self.opener.open(req, timeout=10) as resp:
            return json.loads(resp.read())


def frames_with_images(store: Path, *, min_part_id: int, limit: int) -> list[str]:
    """Frame ids of judged parts from `min_part_id` on whose image the line kept (read
    from the line's store, read-only: which frames an operator could open)."""
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute(
            "SELECT i.frame_id FROM inspections i WHERE i.verdict != 'uninspected'"
            " AND CAST(i.part_id AS INTEGER) >= ? AND EXISTS (SELECT 1 FROM images m"
            " WHERE m.frame_id = i.frame_id AND m.deleted_at IS NULL)"
            " ORDER BY i.id LIMIT ?", (min_part_id, limit)).fetchall()
    finally:
        con.close()
    return [str(r[0]) for r in rows]


def label_frames(client: PanelClient, frame_ids: list[str], line_cfg: LineConfig, *,
                 error_rate: float, sabotage: bool, seed: int = 7) -> LabelStats:
    rnd = random.Random(seed)
    stats = LabelStats()
    for fid in frame_ids:
        frame = client.get(f"/api/frames/{fid}")
        if not frame.get("has_image") or frame.get("part_id") is None:
            continue
        truth = render(line_cfg, int(frame["part_id"])).defects
        stats.frames += 1
        posted = stats.confirmed + stats.rejected + stats.missed
        found = [tuple(d["box_xyxy"]) for d in frame["defects"]]
        names = [d["class_name"] for d in frame["defects"]]
        matched: set[int] = set()
        for i, (box, name) in enumerate(zip(found, names, strict=True)):
            best = max(((iou(box, (t.x1, t.y1, t.x2, t.y2)), j) for j, t in enumerate(truth)
                        if t.class_name == name and j not in matched), default=(0.0, -1))
            ok = best[0] >= MATCH_IOU and not sabotage
            stats.wrong += sabotage and best[0] >= MATCH_IOU  # a real defect rejected
            if ok:
                matched.add(best[1])
            if ok and rnd.random() < error_rate:
                ok = False
                stats.wrong += 1
            _post(client, fid, {"kind": "confirm" if ok else "reject", "defect_index": i},
                  stats)
            stats.confirmed += ok
            stats.rejected += not ok
        w, h = line_cfg.width_px, line_cfg.height_px
        for j, t in enumerate(truth):
            if j in matched:
                continue
            box = (t.x1, t.y1, t.x2, t.y2)
            cls = t.class_name
            if sabotage:
                bw, bh = t.x2 - t.x1, t.y2 - t.y1
                x, y = rnd.uniform(0, w - bw - 1), rnd.uniform(0, h - bh - 1)
                box, cls = (x, y, x + bw, y + bh), rnd.choice(CLASSES)
                stats.wrong += 1  # a box where nothing is
            elif rnd.random() < error_rate:
                stats.wrong += 1
                continue
            _post(client, fid, {"kind": "missed", "class_name": cls,
                                "box_xyxy": [round(v, 1) for v in box]}, stats)
            stats.missed += 1
        stats.labelled_frames += stats.confirmed + stats.rejected + stats.missed > posted
    return stats


def _post(client: PanelClient, fid: str, body: dict[str, Any], stats: LabelStats) -> None:
    try:
        client.post(f"/api/frames/{fid}/labels", body)
    except urllib.error.HTTPError as e:
        stats.errors.append(f"{fid}: {e.code} {e.read()[:200]!r}")


def line_config(seed: int, drift: str) -> LineConfig:
    return LineConfig(seed=seed, drift=Drift.parse(drift))
