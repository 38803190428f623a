"""One upload: `POST {url}/lines/{site}/{line}/samples` (protocol/samples.py; the client
contract in docs/datasets.md) and what its answer means for the queued sample.

| answer | outcome | the uploader |
| --- | --- | --- |
| 200 duplicate, 201 stored | `sent` | removes the sample |
| 401, 403 | `auth` | keeps it, raises the `upload_auth` alarm, retries every `auth_retry_s` |
| 5xx, 408, 429, timeout, connection refused/reset, TLS failure | `retry` | keeps it, backs off |
| other 4xx (409, 411, 413, 415, 422, 400) | `rejected` | drops it (never succeeds), an event |
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx

from protocol.samples import IMAGE_PART, META_PART, SAMPLES_PATH, SampleMeta

Outcome = Literal["sent", "retry", "auth", "rejected"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    detail: str
    status: int | None = None


def classify(status: int) -> Outcome:
    if status in (200, 201):
        return "sent"
    if status in (401, 403):
        return "auth"
    if status >= 500 or status in (408, 429):
        return "retry"
    return "rejected"


def model_ref(model_version: str | None) -> dict[str, object] | None:
    """`"name:version"` (the store's model_version) as a ModelRef dict; None if it is
    not of that shape."""
    if not model_version or ":" not in model_version:
        return None
    name, _, version = model_version.rpartition(":")
    return {"name": name, "version": int(version)} if version.isdigit() and name else None


def _box(box: Box) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def sample_meta(sample_id: str, frame_id: str, captured_at_s: float,
                model: dict[str, object], reason: str,
                predictions: Sequence[tuple[str, float, Box]],
                labels: Sequence[tuple[str, str, Box]] = ()) -> str:
    """The `meta` part as JSON, validated (raises pydantic.ValidationError)."""
    meta = SampleMeta.model_validate({
        "schema": "lineguard.sample/1", "sample_id": sample_id, "frame_id": frame_id,
        "captured_at": datetime.fromtimestamp(captured_at_s, UTC),
        "model": model, "reason": reason,
        "predictions": [{"class_name": c, "score": min(max(float(s), 0.0), 1.0),
                         "box_xyxy": _box(b)} for c, s, b in predictions],
        "labels": [{"kind": k, "class_name": c, "box_xyxy": _box(b)} for k, c, b in labels],
    })
    return json.dumps(meta.model_dump(mode="json", by_alias=True), separators=(",", ":"))


def read_token(path: Path) -> str:
    """The line's token (first line of the file). Raises OSError, ValueError (empty)."""
    token = path.read_text("utf-8").strip().splitlines()
    if not token or not token[0].strip():
        raise ValueError(f"{path} is empty")
    return token[0].strip()


class SampleClient:
    """An HTTP client for one line's samples endpoint. Not thread-safe (one uploader)."""

    def __init__(self, url: str, site: str, line: str, *, ca_file: Path | None,
                 timeout_s: float) -> None:
        self.endpoint = url.rstrip("/") + SAMPLES_PATH.format(site=site, line=line)
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))  # OSError, SSLError
        self._client = httpx.Client(verify=verify, timeout=timeout_s)

    def post(self, token: str, meta_json: str, jpeg: bytes) -> Answer:
        try:
            answer = self._client.post(
                self.endpoint, headers={"Authorization": f"Bearer {token}"},
                data={META_PART: meta_json},
                files={IMAGE_PART: ("frame.jpg", jpeg, "image/jpeg")})
        except httpx.HTTPError as e:  # transport errors, timeouts, TLS
            return Answer("retry", f"{type(e).__name__}: {e}")
        detail = answer.text[:300]
        return Answer(classify(answer.status_code), detail, answer.status_code)

    def close(self) -> None:
        self._client.close()
