"""Config files: the one YAML reader and pydantic error formatter both processes use.

Every message names the file and the dotted key path of each problem, e.g.
``lineguard.yaml: pipeline.max_wait_ms: Input should be less than or equal to 1000``,
and a YAML syntax error gives its line and column. Each package translates
`ConfigFileError` into its own exception tree at its edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from protocol.errors import ProtocolError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ProtocolError):
    """A config file (or mapping) that cannot be read or does not validate; the
    message is one line naming the source and every bad key."""


def format_validation_error(
    error: ValidationError, *, noun: str = "key", max_errors: int | None = None
) -> str:
    """One ``key.path: why`` per pydantic error, joined with ``; ``; never echoes input.

    `noun` names what the document is made of in the messages for unknown and missing
    entries (``key`` in config files, ``field`` in manifests and payloads); with
    `max_errors`, only the first that many are listed, then ``and N more``."""
    items = error.errors(include_url=False, include_input=False)
    shown = items if max_errors is None else items[:max_errors]
    parts: list[str] = []
    for item in shown:
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = f"unknown {noun} (not allowed here; check the spelling)"
        elif item["type"] == "missing":
            msg = f"required {noun} is missing"
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    if len(items) > len(shown):
        parts.append(f"and {len(items) - len(shown)} more")
    return "; ".join(parts)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; mappings are merged key by key, recursively."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_mapping(model: type[M], data: object, source: str) -> M:
    """Validate `data` (None counts as empty) as `model`. Raises ConfigFileError."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as e:
        raise ConfigFileError(f"{source}: {format_validation_error(e)}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is `{}`). Raises
    ConfigFileError for an unreadable file, a syntax error (with line and column) or a
    top level that is not a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{path}: cannot read the file: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigFileError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping, "
                              f"got {type(data).__name__}")
    return data


def load_config_file(
    model: type[M], path: Path, overrides: Mapping[str, Any] | None = None
) -> M:
    """Read the YAML file at `path`, merge `overrides` (same shape as the file) into it
    and validate it as `model`. Raises ConfigFileError."""
    return validate_mapping(model, merge(read_yaml_mapping(path), overrides or {}), str(path))
