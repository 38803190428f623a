"""Generated files (JSON Schemas, README examples) match the models; README examples decode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from protocol import MESSAGE_TYPES, decode, parse_topic, schema_of
from protocol.examples import example_messages, render_readme
from protocol.registry import LEGACY_TYPES
from protocol.schemas import (
    SCHEMA_DIR,
    json_schema,
    json_schema_files,
    schema_filename,
    stale_json_schemas,
    write_json_schemas,
)
from protocol.schemas.cli import main as schemas_main

README = Path(__file__).resolve().parents[2] / "protocol" / "README.md"
REGENERATE = "run `python -m protocol.schemas --readme protocol/README.md` and commit"
EXAMPLE_RE = re.compile(
    r"^#### [^\n]*?`(lineguard/[^`]+)`[^\n]*\n+```json\n(.*?)\n```", re.M | re.S
)


def test_committed_schemas_are_up_to_date():
    assert stale_json_schemas(SCHEMA_DIR) == [], REGENERATE


def test_one_schema_file_per_model():
    names = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))
    assert names == sorted(schema_filename(m) for m in MESSAGE_TYPES)
    assert schema_filename(MESSAGE_TYPES[0]) == "status.v1.json"


@pytest.mark.parametrize("model", MESSAGE_TYPES, ids=lambda m: m.__name__)
def test_schema_content(model):
    schema = json.loads((SCHEMA_DIR / schema_filename(model)).read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"]["const"] == schema_of(model)
    assert schema["additionalProperties"] is False
    assert {"schema", "msg_id", "site", "line", "sent_at"} <= set(schema["required"])
    _assert_closed(schema)


def _assert_closed(node: object) -> None:
    """Every object refuses unknown keys and every value has a type: no Any holes."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, node
        if "title" in node and "description" not in node and "properties" not in node:
            assert {"type", "$ref", "anyOf", "const", "enum"} & set(node), node
        for value in node.values():
            _assert_closed(value)
    elif isinstance(node, list):
        for value in node:
            _assert_closed(value)


def test_write_and_check(tmp_path):
    written = write_json_schemas(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(json_schema_files())
    assert stale_json_schemas(tmp_path / "out") == []
    (tmp_path / "out" / "status.v1.json").write_text("{}", "utf-8")
    (tmp_path / "out" / "status.v0.json").write_text("{}", "utf-8")
    assert stale_json_schemas(tmp_path / "out") == ["status.v1.json", "status.v0.json"]
    assert schemas_main([str(tmp_path / "out"), "--check"]) == 1
    assert schemas_main([str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "status.v0.json").unlink()
    assert schemas_main([str(tmp_path / "out"), "--check"]) == 0


def test_readme_examples_are_up_to_date():
    text = README.read_text("utf-8")
    assert render_readme(text) == text, REGENERATE


def test_readme_has_one_example_per_message_and_each_decodes():
    found = EXAMPLE_RE.findall(README.read_text("utf-8"))
    assert len(found) == len(example_messages())
    decoded = []
    for topic, body in found:
        message = decode(topic, body.encode())
        assert parse_topic(topic)[2] == message.KIND
        decoded.append(message)
    assert decoded == [m for _, m in example_messages()]
    assert {type(m) for m in decoded} == set(MESSAGE_TYPES) - set(LEGACY_TYPES)


def test_readme_examples_fit_their_json_schema_top_level():
    # A shallow check without a JSON Schema library: keys and required fields.
    for topic, body in EXAMPLE_RE.findall(README.read_text("utf-8")):
        document = json.loads(body)
        model = type(decode(topic, body.encode()))
        schema = json_schema(model)
        assert set(document) == set(schema["properties"])  # type: ignore[arg-type]
        assert set(schema["required"]) <= set(document)  # type: ignore[arg-type]


def test_render_readme_needs_markers():
    with pytest.raises(ValueError, match="markers"):
        render_readme("# no markers here\n")
