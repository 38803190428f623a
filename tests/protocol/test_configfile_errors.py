"""Config errors a person can act on (issue 8 item 9): patterns in words, each problem
once, "did you mean" for near-miss keys, YAML syntax errors with line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.config import ApplianceConfig
from cloud.config import CloudConfig
from protocol.configfile import (
    ConfigFileError,
    config_problems,
    format_validation_error,
    load_config_file,
    read_yaml_mapping,
    validate_mapping,
)
from protocol.fields import ID_PATTERN, NAME_PATTERN
from protocol.regex_words import describe_pattern


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Video(_S):
    kind: Literal["video"]
    path: Path
    loop: bool = False


class Camera(_S):
    kind: Literal["camera"]
    index: int = Field(0, ge=0, le=255)


class Station(_S):
    name: str = Field("station-1", pattern=ID_PATTERN)
    source: Annotated[Video | Camera, Field(discriminator="kind")]
    roi_xywh: tuple[int, int, int, int] | None = None


class Tls(_S):
    ca_file: Path | None = None


class Broker(_S):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: Tls | None = None


class Doc(_S):
    stations: list[Station] = []
    broker: Broker | None = None
    target: Tls | Broker = Field(default_factory=Tls)  # a union of sections, no tag
    level: int | str = 0  # a union of scalars
    version: str = Field("v1", pattern=r"^v[0-9]+$")


VIDEO = {"kind": "video", "path": "a.mp4"}

CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("pattern in words", {"stations": [{"name": "Top Cam", "source": VIDEO}]},
     [("stations.0.name", "must be 1 to 63 characters: lowercase letters, digits, `-` and "
       "`_`, starting with a lowercase letter or digit")]),
    ("pattern with a literal", {"version": "1"},
     [("version", "must be `v`, then 1 or more of digits")]),
    ("near-miss key stands for the missing one",
     {"stations": [{"source": {"kind": "video", "pth": "a.mp4"}}]},
     [("stations.0.source.pth", "unknown key (did you mean `path`?)")]),
    ("near-miss top-level key", {"brokr": {}},
     [("brokr", "unknown key (did you mean `broker`?)")]),
    ("unknown key, nothing close", {"broker": {"zzz": 1}},
     [("broker.zzz", "unknown key (not allowed here; check the spelling)")]),
    ("missing required key", {"stations": [{"source": {"kind": "video"}}]},
     [("stations.0.source.path", "required key is missing")]),
    ("misspelt kind", {"stations": [{"source": {"kind": "vidoe"}}]},
     [("stations.0.source",
       "`kind` must be one of video, camera, not `vidoe` (did you mean `video`?)")]),
    ("kind left out", {"stations": [{"source": {"path": "a.mp4"}}]},
     [("stations.0.source",
       "`kind` is missing (it says which kind this is: one of video, camera)")]),
    ("short tuple is one problem", {"stations": [{"source": VIDEO, "roi_xywh": [1, 2]}]},
     [("stations.0.roi_xywh", "needs 4 values, got 2")]),
    ("section given a value", {"broker": "mqtt.local"},
     [("broker", "must be a section (a mapping of keys), not a single value or a list")]),
    ("union of sections: the closer branch only", {"target": {"host": "h", "prot": 1}},
     [("target.prot", "unknown key (did you mean `port`?)")]),
    ("union of sections: bad value in the closer branch", {"target": {"ca_file": [1]}},
     [("target.ca_file", "must be a file or folder path (text)")]),
    ("union of scalars: one problem", {"level": [1]},
     [("level", "Input should be a valid integer or a valid string")]),
    ("bounds keep pydantic's words", {"broker": {"port": 70000}},
     [("broker.port", "Input should be less than or equal to 65535")]),
    ("several problems, each once, in order",
     {"brokr": {}, "stations": [{"name": "A", "source": {"kind": "camera", "index": -1}}]},
     [("stations.0.name", "must be 1 to 63 characters: lowercase letters, digits, `-` and "
       "`_`, starting with a lowercase letter or digit"),
      ("stations.0.source.index", "Input should be greater than or equal to 0"),
      ("brokr", "unknown key (did you mean `broker`?)")]),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_problems(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate(data)
    assert config_problems(info.value, Doc) == expected
    assert format_validation_error(info.value, Doc) == "; ".join(
        f"{where}: {why}" for where, why in expected)


def test_without_the_model_exact_repeats_are_dropped() -> None:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate({"brokr": {}, "level": [1]})
    text = format_validation_error(info.value)
    assert text.count("brokr: unknown key") == 1
    assert "level" in text


# The real config models: keys that other work on the configs leaves alone.
REAL: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (ApplianceConfig, {"site": "Plant 1"},
     "site: must be 1 to 63 characters: lowercase letters, digits, `-` and `_`, "
     "starting with a lowercase letter or digit"),
    (ApplianceConfig, {"pipline": {}}, "pipline: unknown key (did you mean `pipeline`?)"),
    (ApplianceConfig, {"stations": [{"name": "top", "source": {"kind": "video",
                                                                "paht": "a.mp4"}}]},
     "stations.0.source.paht: unknown key (did you mean `path`?)"),
    (ApplianceConfig, {"stations": [{"name": "top", "source": {"kind": "file"}}]},
     "stations.0.source: `kind` must be one of sim, video, folder, camera, stream, not "
     "`file` (did you mean `folder`?)"),
    (ApplianceConfig, {"stations": [{"name": "top", "roi_xywh": [0, 0, 10]}]},
     "stations.0.roi_xywh: needs 4 values, got 3"),
    (CloudConfig, {"collector": {"broker": {"client_id": "my collector"}}},
     "collector.broker.client_id: must be 1 to 64 characters: letters, digits, `-`, `.`, `:` "
     "and `_`, starting with a letter or digit"),
    (CloudConfig, {"stroe": {}}, "stroe: unknown key (did you mean `store`?)"),
]


@pytest.mark.parametrize(("model", "data", "expected"), REAL)
def test_real_config_models(model: type[BaseModel], data: dict[str, Any],
                            expected: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        validate_mapping(model, data, "line.yaml")
    assert str(info.value) == f"line.yaml: {expected}"


YAML: list[tuple[str, str]] = [
    ("site: a\nstore: path: x\n", "(line 2, column 12): mapping values are not allowed here"),
    ("pipeline:\n\tmax_batch: 8\n",
     "(line 2, column 1): found character '\\t' that cannot start any token (indent "
     "with spaces: YAML does not allow tabs there)"),
    ('site: "abc\nline: x\n',
     "(line 3, column 1): found unexpected end of stream (while scanning a quoted scalar "
     "that started on line 1, column 7)"),
    ("engine: {providers: [cpu}\n", "(line 1, column 25): expected ',' or ']', but got '}'"),
    ("site: a\nline: b\nsite: c\n",
     "(line 3, column 1): key `site` is written twice in one mapping (first on line 1): "
     "keep one"),
    ("store:\n  path: a\n  path: b\n",
     "(line 3, column 3): key `path` is written twice in one mapping (first on line 2): "
     "keep one"),
]


@pytest.mark.parametrize(("text", "expected"), YAML)
def test_yaml_errors_say_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        read_yaml_mapping(path)
    assert str(info.value) == f"{path}: not valid YAML {expected}"


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text("base: &b {k: 1, j: 2}\nother:\n  <<: *b\n  k: 3\n", encoding="utf-8")
    assert read_yaml_mapping(path)["other"] == {"k": 3, "j": 2}


def test_a_file_with_several_problems_names_each_once(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text("site: Plant-1\nstations:\n  - name: top\n    source: {kind: video, "
                    "pth: a.mp4}\n", encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        load_config_file(ApplianceConfig, path)
    problems = str(info.value).removeprefix(f"{path}: ").split("; ")
    assert problems == [
        "site: must be 1 to 63 characters: lowercase letters, digits, `-` and `_`, "
        "starting with a lowercase letter or digit",
        "stations.0.source.pth: unknown key (did you mean `path`?)",
    ]


PATTERNS: list[tuple[str, str | None]] = [
    (ID_PATTERN, "1 to 63 characters: lowercase letters, digits, `-` and `_`, starting "
                 "with a lowercase letter or digit"),
    (NAME_PATTERN, "1 to 64 characters: letters, digits, `-`, `.`, `:` and `_`, starting "
                   "with a letter or digit"),
    (r"^[a-z]+$", "1 or more characters: lowercase letters"),
    (r"^[A-Z]{2}$", "2 characters: uppercase letters"),
    (r"^[_A-Z][a-z]*$", "an uppercase letter or `_`, then 0 or more of lowercase letters"),
    (r"^(?:[0-9a-f]{32}|x)$", None),  # alternation: shown as the pattern itself
    (r"^[^\x00-\x1f]*$", None),  # negated class
    (r"[a-z]+", None),  # not anchored
]


@pytest.mark.parametrize(("pattern", "words"), PATTERNS)
def test_describe_pattern(pattern: str, words: str | None) -> None:
    assert describe_pattern(pattern) == words


def test_a_pattern_without_words_is_shown_as_is() -> None:
    class Odd(_S):
        code: str = Field(pattern=r"^(?:ab|cd)$")

    with pytest.raises(ValidationError) as info:
        Odd.model_validate({"code": "x"})
    assert format_validation_error(info.value, Odd) == (
        "code: must match the regular expression ^(?:ab|cd)$")
