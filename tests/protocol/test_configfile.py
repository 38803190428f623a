"""protocol.configfile: errors that name the file and the key path, YAML positions,
merging of overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.configfile import (
    ConfigFileError,
    format_validation_error,
    load_config_file,
    merge,
    read_yaml_mapping,
    validate_mapping,
)
from protocol.errors import ProtocolError


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    name: str = "a"


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner = Field(default_factory=Inner)
    items: list[Inner] = Field(default_factory=list)
    required_key: int = 0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    needed: int


def _error(model: type[BaseModel], data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


@pytest.mark.parametrize(
    ("model", "data", "kwargs", "expected"),
    [
        (Doc, {"inner": {"max_wait_ms": 5000}}, {},
         "inner.max_wait_ms: Input should be less than or equal to 1000"),
        (Doc, {"inner": {"max_wait": 1}}, {},
         "inner.max_wait: unknown key (not allowed here; check the spelling)"),
        (Doc, {"items": [{}, {"name": 3}]}, {},
         "items.1.name: Input should be a valid string"),
        (Strict, {}, {}, "needed: required key is missing"),
        (Strict, {}, {"noun": "field"}, "needed: required field is missing"),
        (Doc, {"nope": 1}, {"noun": "field"},
         "nope: unknown field (not allowed here; check the spelling)"),
        (Doc, [1], {}, "(top level): must be a section (a mapping of keys), "
                            "not a single value or a list"),
    ],
)
def test_format_names_the_key_path(model: type[BaseModel], data: Any,
                                   kwargs: dict[str, Any], expected: str) -> None:
    assert format_validation_error(_error(model, data), **kwargs) == expected


def test_format_joins_and_caps_and_never_echoes_input() -> None:
    error = _error(Doc, {"a": "secret-1", "b": "secret-2", "c": "secret-3"})
    full = format_validation_error(error)
    unknown = "unknown key (not allowed here; check the spelling)"
    assert full == f"a: {unknown}; b: {unknown}; c: {unknown}"
    assert "secret" not in full
    capped = format_validation_error(error, max_errors=1)
    assert capped == "a: unknown key (not allowed here; check the spelling); and 2 more"


@pytest.mark.parametrize(
    ("base", "overrides", "expected"),
    [
        ({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 9}, "e": 4},
         {"a": {"b": 9, "c": 2}, "d": 3, "e": 4}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),  # a scalar replaces a mapping
        ({"a": 5}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),  # lists are replaced, not merged
        ({}, {}, {}),
    ],
)
def test_merge(base: dict[str, Any], overrides: dict[str, Any],
               expected: dict[str, Any]) -> None:
    before = repr(base)
    assert merge(base, overrides) == expected
    assert repr(base) == before  # the base is not modified


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lineguard.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("# only a comment\n", {}),
        ("inner: {name: b}\n", {"inner": {"name": "b"}}),
    ],
)
def test_read_yaml_mapping(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    assert read_yaml_mapping(_write(tmp_path, text)) == expected


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("inner:\n  a: b: c\n", r"not valid YAML \(line 2, column 7\)"),
        ("- a\n- b\n", "top level must be a mapping, got list"),
        ("just a string\n", "top level must be a mapping, got str"),
    ],
)
def test_read_yaml_mapping_errors(tmp_path: Path, text: str, pattern: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigFileError, match=pattern) as info:
        read_yaml_mapping(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigFileError, match="cannot read"):
        read_yaml_mapping(binary)


def test_load_config_file_merges_overrides_and_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "inner: {max_wait_ms: 5, name: x}\n")
    doc = load_config_file(Doc, path, {"inner": {"name": "y"}, "required_key": 3})
    assert (doc.inner.max_wait_ms, doc.inner.name, doc.required_key) == (5.0, "y", 3)
    with pytest.raises(ConfigFileError) as info:
        load_config_file(Doc, path, {"inner": {"max_wait_ms": -1}})
    assert str(info.value) == (
        f"{path}: inner.max_wait_ms: Input should be greater than or equal to 0")


def test_validate_mapping(tmp_path: Path) -> None:
    assert validate_mapping(Doc, None, "defaults") == Doc()
    with pytest.raises(ConfigFileError, match=r"^defaults: needed: required key is missing$"):
        validate_mapping(Strict, {}, "defaults")


def test_config_errors_belong_to_the_protocol_tree() -> None:
    assert issubclass(ConfigFileError, ProtocolError)
