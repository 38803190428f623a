"""JSON Schema (draft 2020-12) of every payload, generated from the pydantic models.

The committed files in this folder are what other teams validate against; a test fails
when they differ from the models. Regenerate with `python -m protocol.schemas`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from protocol.atomic import atomic_write_text
from protocol.registry import MESSAGE_TYPES, Message, schema_of

SCHEMA_DIR: Final = Path(__file__).resolve().parent
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# JSON values as pydantic's generator emits them (no Any: recursion through object).
JsonObject = dict[str, object]


def schema_filename(model: type[Message]) -> str:
    """File name of a model's schema: `lineguard.status/1` becomes `status.v1.json`."""
    name, version = schema_of(model).removeprefix("lineguard.").split("/")
    return f"{name}.v{version}.json"


def _close_maps(node: object) -> None:
    # pydantic writes constrained dict keys as patternProperties, which on its own lets
    # any other key through; the models refuse them, so the schema must too.
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_maps(value)


def _enum_keyed_maps(node: object, defs: JsonObject) -> None:
    # pydantic writes a map keyed by an enum as `propertyNames` plus one schema for every
    # value; spelled out as `properties` (one per allowed key, all optional) the same
    # map is closed like every other object, and a reader sees the allowed keys at once.
    if isinstance(node, dict):
        names = node.get("propertyNames")
        if isinstance(names, dict) and isinstance(names.get("$ref"), str):
            names = defs.get(str(names["$ref"]).rsplit("/", 1)[-1])
        value = node.get("additionalProperties")
        if isinstance(names, dict) and isinstance(names.get("enum"), list) and \
                isinstance(value, dict):
            del node["propertyNames"]
            node["properties"] = {str(key): value for key in names["enum"]}
            node["additionalProperties"] = False
        for child in node.values():
            _enum_keyed_maps(child, defs)
    elif isinstance(node, list):
        for child in node:
            _enum_keyed_maps(child, defs)


def _unused_defs(generated: JsonObject) -> None:
    defs = generated.get("$defs")
    if not isinstance(defs, dict):
        return
    text = json.dumps({k: v for k, v in generated.items() if k != "$defs"}) + json.dumps(defs)
    for name in [n for n in defs if f'"#/$defs/{n}"' not in text]:
        del defs[name]


def json_schema(model: type[Message]) -> JsonObject:
    """The JSON Schema of one payload model (what `decode` accepts, validation mode)."""
    generated = model.model_json_schema(by_alias=True, mode="validation")
    defs = generated.get("$defs")
    _enum_keyed_maps(generated, defs if isinstance(defs, dict) else {})
    _unused_defs(generated)
    _close_maps(generated)
    # `schema` has a default for building messages in Python, but on the wire it is how
    # a consumer picks the model, so every payload must carry it.
    required = generated.get("required")
    if isinstance(required, list) and "schema" not in required:
        generated["required"] = ["schema", *required]
    return {"$schema": _DIALECT, "$id": schema_filename(model), **generated}


def json_schema_files() -> dict[str, str]:
    """Map file name to file text (sorted keys, 2-space indent, final newline)."""
    return {
        schema_filename(model): json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n"
        for model in MESSAGE_TYPES
    }


def write_json_schemas(directory: Path) -> list[Path]:
    """Write every payload's JSON Schema into `directory` (created if missing).

    Returns the paths written. Raises OSError if the directory cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schema_files().items():
        path = directory / name
        atomic_write_text(path, text)
        written.append(path)
    return written


def stale_json_schemas(directory: Path) -> list[str]:
    """Names of schema files in `directory` that are missing, differ, or are left over."""
    expected = json_schema_files()
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]
    stale += sorted(p.name for p in directory.glob("*.json") if p.name not in expected)
    return stale
