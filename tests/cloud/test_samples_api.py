"""`POST /lines/{site}/{line}/samples` and the inbox, on both database back ends:
idempotent uploads, per-line tokens, refusal of malformed, oversized and unauthorised
bodies with nothing stored, and accepting the inbox into a dataset version."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api.uploads import samples_router
from cloud.datasets import tables as t
from cloud.datasets.errors import DatasetRejected
from cloud.datasets.inbox import SampleInbox
from cloud.datasets.index import DatasetIndex
from tests.cloud.dataset_helpers import (
    CLASSES,
    index,
    jpeg_bytes,
    meta,
    multipart,
    png_bytes,
    source_yaml,
)

with warnings.catch_warnings():
    # Starlette 1.10 prefers httpx2 for its TestClient and warns once, at import, when it
    # falls back to httpx (the dev extra's client); both work.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

__all__ = ["index", "source_yaml"]  # fixtures

MAX_BODY = 256 * 1024
URL = "/lines/plant1/line1/samples"


@pytest.fixture
def inbox(index: DatasetIndex) -> SampleInbox:
    return SampleInbox(index, max_pixels=1_000_000)


@pytest.fixture
def client(inbox: SampleInbox) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(samples_router(inbox, max_body_bytes=MAX_BODY))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def tokens(inbox: SampleInbox) -> dict[str, str]:
    return {"line1": inbox.issue_token("plant1", "line1"),
            "line2": inbox.issue_token("plant1", "line2")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored(inbox: SampleInbox) -> tuple[int, int, int]:
    """(sample rows, image rows, objects on disk)."""
    with inbox.index.connection("count") as conn:
        samples = conn.execute(select(func.count()).select_from(t.line_samples)).scalar_one()
        images = conn.execute(select(func.count()).select_from(t.dataset_images)).scalar_one()
    return samples, images, len(list(inbox.index.objects.all_objects()))


def test_upload_is_stored_once_and_a_repeat_is_a_no_op(client, inbox, tokens):
    image = png_bytes(1)
    first = client.post(URL, headers=auth(tokens["line1"]), **multipart(meta("s-1"), image))
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "stored"
    again = client.post(URL, headers=auth(tokens["line1"]), **multipart(meta("s-1"), image))
    assert again.status_code == 200
    assert again.json() == {**first.json(), "status": "duplicate"}
    jpeg = client.post(URL, headers=auth(tokens["line1"]),
                       **multipart(meta("s-2"), jpeg_bytes(2), "image/jpeg"))
    assert jpeg.status_code == 201, jpeg.text
    assert stored(inbox) == (2, 2, 2)
    entries = inbox.entries("plant1", "line1")
    assert [(e.sample_id, e.reason, e.predictions, e.model) for e in entries] == [
        ("s-1", "random", 1, "demo@3"), ("s-2", "random", 1, "demo@3")]
    # the same sample id on another line is another sample
    other = client.post("/lines/plant1/line2/samples", headers=auth(tokens["line2"]),
                        **multipart(meta("s-1"), image))
    assert other.status_code == 201
    assert inbox.counts() == {("plant1", "line1"): {"inbox": 2},
                              ("plant1", "line2"): {"inbox": 1}}


def test_a_sample_id_reused_for_another_image_is_a_conflict(client, inbox, tokens):
    assert client.post(URL, headers=auth(tokens["line1"]),
                       **multipart(meta("s-1"), png_bytes(1))).status_code == 201
    before = stored(inbox)
    clash = client.post(URL, headers=auth(tokens["line1"]), **multipart(meta("s-1"), png_bytes(2)))
    assert clash.status_code == 409
    assert "another image" in clash.json()["detail"]
    assert stored(inbox) == before


def _truncated_png() -> bytes:
    data = png_bytes(3)
    return data[: len(data) - 20]


def _flat_png(width: int, height: int) -> bytes:
    ok, buffer = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return buffer.tobytes()


def _gif() -> bytes:
    return b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


# (name, request keyword arguments (headers merged with the line1 token unless given),
#  expected status, a fragment of the answer)
BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("no token", {"headers": {}}, 401, "missing bearer token"),
    ("wrong token", {"headers": auth("x" * 43)}, 401, "wrong line token"),
    ("basic auth", {"headers": {"Authorization": "Basic dXNlcjpwdw=="}}, 401, "missing"),
    ("another line's token", {"token": "line2"}, 403, "not plant1/line1's"),
    ("json body", {"json": meta("s-1")}, 415, "multipart/form-data"),
    ("oversized", {"meta": meta("s-1"), "image": b"\xff" * (MAX_BODY + 1)}, 413, "over the limit"),
    ("no meta", {"files": {"image": ("a.png", png_bytes(1), "image/png")}}, 422, "meta"),
    ("no image", {"data": {"meta": json.dumps(meta("s-1"))},
                  "files": {"picture": ("a.png", png_bytes(1), "image/png")}}, 422, "image"),
    ("url-encoded form", {"data": {"meta": json.dumps(meta("s-1"))}}, 415, "multipart"),
    ("meta not json", {"meta": "{not json", "image": png_bytes(1)}, 422, "meta"),
    ("meta unknown field", {"meta": meta("s-1", colour="red"), "image": png_bytes(1)}, 422,
     "colour"),
    ("meta wrong schema", {"meta": meta("s-1", schema="lineguard.sample/9"),
                           "image": png_bytes(1)}, 422, "schema"),
    ("bad sample id", {"meta": meta("../../etc"), "image": png_bytes(1)}, 422, "sample_id"),
    ("bad reason", {"meta": meta("s-1", reason="hunch"), "image": png_bytes(1)}, 422, "reason"),
    ("score over 1", {"meta": meta("s-1", predictions=[
        {"class_name": "pit", "score": 1.5, "box_xyxy": [1, 1, 2, 2]}]),
        "image": png_bytes(1)}, 422, "score"),
    ("box reversed", {"meta": meta("s-1", labels=[
        {"kind": "missed", "class_name": "pit", "box_xyxy": [9, 9, 2, 2]}]),
        "image": png_bytes(1)}, 422, "x1 <= x2"),
    ("box outside the image", {"meta": meta("s-1", labels=[
        {"kind": "missed", "class_name": "pit", "box_xyxy": [10, 10, 500, 20]}]),
        "image": png_bytes(1)}, 422, "outside the 64x48 image"),
    ("naive time", {"meta": meta("s-1", captured_at="2025-03-14T09:00:00"),
                    "image": png_bytes(1)}, 422, "captured_at"),
    ("truncated png", {"meta": meta("s-1"), "image": _truncated_png()}, 422, "truncated png"),
    ("gif", {"meta": meta("s-1"), "image": _gif(), "type": "image/gif"}, 422,
     "content type must be"),
    ("gif as png", {"meta": meta("s-1"), "image": _gif()}, 422, "not a JPEG or PNG"),
    ("empty image", {"meta": meta("s-1"), "image": b""}, 422, "not a JPEG or PNG"),
    ("too many pixels", {"meta": meta("s-1"), "image": _flat_png(1200, 1000)}, 422,
     "more than the limit"),
    ("text as image", {"meta": meta("s-1"), "image": b"hello", "type": "text/plain"}, 422,
     "content type"),
    ("meta too big", {"meta": "x" * (MAX_BODY - 1000), "image": b""}, 422, "meta"),
    ("two images", {"data": {"meta": json.dumps(meta("s-1"))},
                    "files": [("image", ("a.png", png_bytes(1), "image/png")),
                              ("image", ("b.png", png_bytes(2), "image/png"))]}, 400,
     "Too many files"),
]


ON_BOTH = {"wrong token", "another line's token", "box outside the image", "truncated png"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("case", "kwargs", "code", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_a_clear_4xx_and_store_nothing(client, inbox, tokens, case, kwargs,
                                                       code, fragment):
    _check_refused(client, inbox, tokens, kwargs, code, fragment)


@pytest.mark.parametrize(("case", "kwargs", "code", "fragment"),
                         [b for b in BAD if b[0] in ON_BOTH], ids=sorted(ON_BOTH, key=[
                             b[0] for b in BAD].index))
def test_bad_uploads_on_both_back_ends(client, inbox, tokens, case, kwargs, code, fragment):
    _check_refused(client, inbox, tokens, kwargs, code, fragment)


def _check_refused(client: TestClient, inbox: SampleInbox, tokens: dict[str, str],
                   kwargs: dict[str, Any], code: int, fragment: str) -> None:
    kwargs = dict(kwargs)
    headers = kwargs.pop("headers", auth(tokens[kwargs.pop("token", "line1")]))
    if "meta" in kwargs:
        kwargs.update(multipart(kwargs.pop("meta"), kwargs.pop("image"),
                                kwargs.pop("type", "image/png")))
    answer = client.post(URL, headers=headers, **kwargs)
    assert answer.status_code == code, answer.text
    assert fragment in answer.text
    assert len(answer.content) < 2000  # never echoes the body back
    assert stored(inbox) == (0, 0, 0)


def test_bad_path_and_no_length(client, inbox, tokens):
    assert client.post("/lines/Plant1/line1/samples", headers=auth(tokens["line1"]),
                       **multipart(meta("s-1"), png_bytes(1))).status_code == 422
    chunked = client.post(URL, headers=auth(tokens["line1"]),
                          content=iter([b"--x\r\n"]))  # a generator body: chunked, no length
    assert chunked.status_code == 411
    assert stored(inbox) == (0, 0, 0)


def test_a_new_token_replaces_the_old_one(client, inbox, tokens):
    new = inbox.issue_token("plant1", "line1")
    assert client.post(URL, headers=auth(tokens["line1"]),
                       **multipart(meta("s-1"), png_bytes(1))).status_code == 401
    assert client.post(URL, headers=auth(new),
                       **multipart(meta("s-1"), png_bytes(1))).status_code == 201


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=st.one_of(_json, st.fixed_dictionaries(
    {k: _json for k in ("schema", "sample_id", "frame_id", "captured_at", "model", "reason")})),
    image=st.binary(max_size=300) | st.sampled_from([_truncated_png(), _gif()]))
def test_fuzzed_bodies_are_4xx_and_store_nothing(client, inbox, tokens, doc, image):
    answer = client.post(URL, headers=auth(tokens["line1"]),
                         **multipart(json.dumps(doc), image))
    assert 400 <= answer.status_code < 500, answer.text
    assert stored(inbox) == (0, 0, 0)


def _labelled(sample_id: str, labels: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return meta(sample_id, reason="operator", labels=labels, **kw)


def test_accept_turns_labelled_samples_into_a_version(client, inbox, tokens, source_yaml):
    index = inbox.index
    post = lambda m, img: client.post(URL, headers=auth(tokens["line1"]),  # noqa: E731
                                      **multipart(m, img))
    assert post(_labelled("op-1", [
        {"kind": "confirm", "class_name": "pit", "box_xyxy": [4, 4, 20, 16]},
        {"kind": "reject", "class_name": "stain", "box_xyxy": [30, 30, 40, 40]},
        {"kind": "missed", "class_name": "crack", "box_xyxy": [0, 0, 64, 10]}]),
        png_bytes(11)).status_code == 201
    assert post(_labelled("op-2", [
        {"kind": "reject", "class_name": "pit", "box_xyxy": [4, 4, 20, 16]}]),
        png_bytes(12)).status_code == 201  # operator: no defect at all
    assert post(meta("rnd-1"), png_bytes(13)).status_code == 201  # predictions only
    with pytest.raises(DatasetRejected, match="new dataset: give its class names"):
        inbox.accept("plant1", "line1", "from-line")
    result = inbox.accept("plant1", "line1", "from-line", classes=CLASSES)
    v = result.version
    assert (v.ref, result.accepted, result.skipped, v.images) == ("from-line@1", 2, 1, 2)
    labels = {i.image_sha256: i.labels for i in index.items(v.ref)}
    assert sorted(len(x.splitlines()) for x in labels.values()) == [0, 2]
    two = next(x for x in labels.values() if x)
    assert two == ("1 0.187500 0.208333 0.250000 0.250000\n"   # pit, confirmed
                   "2 0.500000 0.104167 1.000000 0.208333")    # crack, missed
    states = {e.sample_id: (e.state, e.accepted_into) for e in inbox.entries(state="all")}
    assert states == {"op-1": ("accepted", "from-line@1"), "op-2": ("accepted", "from-line@1"),
                      "rnd-1": ("inbox", None)}
    # the predictions-only sample, on request, into a union with an imported base
    base = index.import_yolo(source_yaml, "parts")
    with_predictions = inbox.accept("plant1", "line1", "parts", include_predictions=True)
    w = with_predictions.version
    assert (w.ref, w.parents, w.images) == ("parts@2", ["parts@1"], base.images + 1)
    assert with_predictions.accepted == 1
    with pytest.raises(DatasetRejected, match="the inbox is empty"):
        inbox.accept("plant1", "line1", "parts")


def test_accept_refuses_unknown_classes_and_changes_nothing(client, inbox, tokens, source_yaml):
    inbox.index.import_yolo(source_yaml, "parts")
    assert client.post(URL, headers=auth(tokens["line1"]), **multipart(_labelled("op-1", [
        {"kind": "missed", "class_name": "dent", "box_xyxy": [4, 4, 20, 16]}]),
        png_bytes(21))).status_code == 201
    with pytest.raises(DatasetRejected, match=r"sample op-1: unknown class.*dent"):
        inbox.accept("plant1", "line1", "parts")
    assert client.post("/lines/plant1/line2/samples", headers=auth(tokens["line2"]),
                       **multipart(meta("rnd-1"), png_bytes(22))).status_code == 201
    with pytest.raises(DatasetRejected, match="no sample has operator labels"):
        SampleInbox(inbox.index).accept("plant1", "line2", "parts")
    assert [v.ref for v in inbox.index.list()] == ["parts@1"]
    assert [e.state for e in inbox.entries(state="all")] == ["inbox", "inbox"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_spec_documents_the_multipart_body(client):
    post = client.app.openapi()["paths"]["/lines/{site}/{line}/samples"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["meta", "image"]
    meta_schema = form["schema"]["properties"]["meta"]["contentSchema"]
    assert "sample_id" in meta_schema["properties"] and "schema" in meta_schema["properties"]
    assert {"201", "200", "401", "403", "409", "413"} <= set(post["responses"])
