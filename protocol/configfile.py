"""Config files: the one YAML reader and pydantic error formatter both processes use.

Every message names the file and the dotted key path of each problem, e.g.
``lineguard.yaml: pipeline.max_wait_ms: Input should be less than or equal to 1000``,
and a YAML syntax error gives its line and column. Each package translates
`ConfigFileError` into its own exception tree at its edge.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from protocol.errors import ProtocolError
from protocol.regex_words import describe_pattern

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ProtocolError):
    """A config file (or mapping) that cannot be read or does not validate; the
    message is one line naming the source and every bad key."""


def format_validation_error(
    error: ValidationError,
    model: type[BaseModel] | None = None,
    *,
    noun: str = "key",
    max_errors: int | None = None,
) -> str:
    """One ``key.path: why`` per problem, joined with ``; ``; never echoes input.

    `noun` names what the document is made of in the messages for unknown and missing
    entries (``key`` in config files, ``field`` in manifests and payloads); with
    `max_errors`, only the first that many are listed, then ``and N more``.

    With `model` (the class that was validated) the text is what a person can act on:
    the branches of a union are folded into the one problem they describe (the branch
    the input came closest to), a near-miss unknown key gets "did you mean `path`?"
    (difflib against the keys allowed at that place) and stands for the required key
    it misspells, a tuple short of values is one problem, and patterns are said in
    words. Without `model` only exact repeats are dropped.
    """
    problems = config_problems(error, model, noun=noun)
    shown = problems if max_errors is None else problems[:max_errors]
    parts = [f"{where}: {why}" for where, why in shown]
    if len(problems) > len(shown):
        parts.append(f"and {len(problems) - len(shown)} more")
    return "; ".join(parts)


def config_problems(
    error: ValidationError, model: type[BaseModel] | None = None, *, noun: str = "key"
) -> list[tuple[str, str]]:
    """The problems of `error` as ``(key.path, why)`` pairs, each once, in input order
    (see `format_validation_error`)."""
    items = [_resolve(item, model) for item in error.errors(include_url=False,
                                                            include_input=False)]
    items = _fold_unions(items)
    suggestions = {(it.path[:-1], it.suggestion) for it in items if it.suggestion}
    problems: list[tuple[str, str]] = []
    short_tuples: set[tuple[Loc, ...]] = set()
    for it in items:
        if it.type == "missing" and it.path and (it.path[:-1], it.path[-1]) in suggestions:
            continue  # the unknown key that misspells it says so
        if it.type == "missing" and it.tuple_len and isinstance(it.path[-1], int):
            if it.path[:-1] in short_tuples:
                continue
            short_tuples.add(it.path[:-1])
            problem = (_dotted(it.path[:-1]),
                       f"needs {it.tuple_len} values, got {it.path[-1]}")
        else:
            problem = (_dotted(it.path), _why(it, noun))
        if problem not in problems:
            problems.append(problem)
    return problems


Loc = str | int


@dataclass(frozen=True)
class _Item:
    """One pydantic error placed in the config's own key structure."""

    type: str
    msg: str
    ctx: Mapping[str, Any]
    path: tuple[Loc, ...]  # as the person writes it: no union branch labels
    union: tuple[tuple[Loc, ...], str] | None = None  # (path of the union, branch label)
    suggestion: str | None = None  # did-you-mean key for an unknown key
    tuple_len: int | None = None  # the parent is a fixed-length tuple of this many
    tags: tuple[str, ...] = ()  # a discriminated union's tags, at its own path


def _dotted(path: tuple[Loc, ...]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """`tp` without Annotated and without `| None`, and the discriminator if any."""
    discriminator = None
    while True:
        if get_origin(tp) is Annotated:
            args = get_args(tp)
            for meta in args[1:]:
                d = getattr(meta, "discriminator", None)
                if isinstance(d, str):
                    discriminator = d
            tp = args[0]
            continue
        if get_origin(tp) in (Union, UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, discriminator


def _label(tp: Any) -> str:
    """The name pydantic gives a union branch of type `tp` in an error location."""
    origin = get_origin(tp)
    if origin is not None and get_args(tp):
        return f"{getattr(origin, '__name__', origin)}[{', '.join(map(_label, get_args(tp)))}]"
    return str(getattr(tp, "__name__", tp))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tags(member: Any, discriminator: str) -> tuple[str, ...]:
    if not _is_model(member) or discriminator not in member.model_fields:
        return ()
    return tuple(str(a) for a in get_args(member.model_fields[discriminator].annotation))


def _field(model: type[BaseModel], key: Loc) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return Annotated[info.annotation, info] if info.discriminator else info.annotation
    return None


def _resolve(item: Mapping[str, Any], model: type[BaseModel] | None) -> _Item:
    """Walk `item`'s location through `model`'s types: drop union branch labels and
    note what the message needs (the keys allowed beside an unknown key, a tuple's
    length, a discriminated union's tags)."""
    loc: tuple[Loc, ...] = tuple(item["loc"])
    path: list[Loc] = []
    union: tuple[tuple[Loc, ...], str] | None = None
    tp: Any = model
    parent: Any = None
    for seg in loc:
        tp, discriminator = _unwrap(tp)
        if get_origin(tp) in (Union, UnionType):
            members = get_args(tp)
            if union is None:
                union = (tuple(path), str(seg))
            matches = [m for m in members
                       if (discriminator and str(seg) in _tags(m, discriminator))
                       or _label(m) == str(seg)]
            tp = matches[0] if matches else None
            continue
        parent = tp
        path.append(seg)
        if _is_model(tp) and isinstance(seg, str):
            tp = _field(tp, seg)
        elif get_origin(tp) is tuple and isinstance(seg, int):
            args = get_args(tp)
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (
                args[seg] if seg < len(args) else None)
        elif get_origin(tp) in (list, set, frozenset, Sequence) and get_args(tp):
            tp = get_args(tp)[0]
        elif get_origin(tp) in (dict, Mapping) and get_args(tp):
            tp = get_args(tp)[1]
        else:
            tp = None
    ctx: Mapping[str, Any] = item.get("ctx") or {}
    suggestion = None
    if item["type"] == "extra_forbidden" and _is_model(parent) and path:
        keys = [info.alias or name for name, info in parent.model_fields.items()]
        close = difflib.get_close_matches(str(path[-1]), keys, n=1)
        suggestion = close[0] if close else None
    tuple_len = None
    if get_origin(parent) is tuple and Ellipsis not in get_args(parent):
        tuple_len = len(get_args(parent))
    tags: tuple[str, ...] = ()
    end, discriminator = _unwrap(tp)
    if discriminator and get_origin(end) in (Union, UnionType):
        tags = tuple(t for m in get_args(end) for t in _tags(m, discriminator))
    return _Item(item["type"], item["msg"], ctx, tuple(path), union, suggestion,
                 tuple_len, tags)


def _fold_unions(items: list[_Item]) -> list[_Item]:
    """Keep, for each union that failed, only the branch the input came closest to: the
    one whose errors are past the type check (deeper than the union, or not a type
    error) with the fewest errors; when every branch failed its type check, one item
    saying the types it could have been."""
    branches: dict[tuple[Loc, ...], dict[str, list[_Item]]] = {}
    for it in items:
        if it.union is not None:
            branches.setdefault(it.union[0], {}).setdefault(it.union[1], []).append(it)
    out: list[_Item] = []
    done: set[tuple[Loc, ...]] = set()
    for it in items:
        if it.union is None:
            out.append(it)
            continue
        where = it.union[0]
        if where in done:
            continue
        done.add(where)
        options = branches[where]
        closer = {label: errs for label, errs in options.items()
                  if any(len(e.path) > len(where) or not e.type.endswith("_type")
                         for e in errs)}
        if closer:
            out += closer[min(closer, key=lambda label: len(closer[label]))]
            continue
        wants = [e.msg.removeprefix("Input should be ") for errs in options.values()
                 for e in errs]
        out.append(_Item("union_type", "Input should be " + " or ".join(
            dict.fromkeys(wants)), {}, where))
    return out


def _why(it: _Item, noun: str) -> str:
    """What is wrong, in words a person can act on."""
    if it.type == "extra_forbidden":
        if it.suggestion:
            return f"unknown {noun} (did you mean `{it.suggestion}`?)"
        return f"unknown {noun} (not allowed here; check the spelling)"
    if it.type == "missing":
        return f"required {noun} is missing"
    if it.type == "string_pattern_mismatch":
        pattern = str(it.ctx.get("pattern", ""))
        words = describe_pattern(pattern)
        return f"must be {words}" if words else f"must match the regular expression {pattern}"
    if it.type in ("union_tag_invalid", "union_tag_not_found"):
        key = str(it.ctx.get("discriminator", "kind")).strip("'")
        tags = ", ".join(it.tags) or str(it.ctx.get("expected_tags", ""))
        if it.type == "union_tag_not_found":
            return f"`{key}` is missing (it says which kind this is: one of {tags})"
        # The tag is echoed: it names a kind (a Literal), never a secret.
        tag = str(it.ctx.get("tag", ""))
        close = difflib.get_close_matches(tag, list(it.tags), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"`{key}` must be one of {tags}, not `{tag}`{hint}"
    if it.type == "path_type":
        return "must be a file or folder path (text)"
    if it.type in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a section (a mapping of keys), not a single value or a list"
    return it.msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


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
        raise ConfigFileError(f"{source}: {format_validation_error(e, model)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping: YAML says keys
    are unique, and PyYAML would silently keep the last one."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` keys may be overridden; that is what they are for
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key `{key}` is written twice in one mapping (first on line "
                f"{first_line[key] + 1}): keep one", key_node.start_mark)
        if isinstance(key, Hashable):
            first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_mapping)


def yaml_error_text(error: yaml.YAMLError) -> str:
    """A YAML error in one line: ``(line L, column C): problem``, with where the
    construct it was reading started when that is elsewhere, and a hint for tabs."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    text = f"{where}: {getattr(error, 'problem', None) or error}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and (
            mark is None or context_mark.line != mark.line):
        text += f" ({context} that started on line {context_mark.line + 1}, column " \
                f"{context_mark.column + 1})"
    if "'\\t'" in text:
        text += " (indent with spaces: YAML does not allow tabs there)"
    return text.replace("\n", " ")  # one line: a reader error spans two


MAX_CONFIG_BYTES = 1024 * 1024
"""A config file larger than this is refused unread."""
MAX_YAML_DEPTH = 32
"""The deepest nesting of mappings and lists a config file may have (the deepest real
config is about 6 levels); deeper input would exhaust the YAML constructor's recursion."""
MAX_YAML_ALIASES = 256
"""The most `*alias` references in one file: each can stand for a whole subtree, so
many of them nested expand exponentially (the "billion laughs")."""


def _check_shape(text: str, path: Path) -> None:
    """Walk the YAML event stream (PyYAML's parser keeps an explicit stack; only the
    constructor recurses) and refuse too deep nesting, too many aliases or an integer
    of more digits than Python converts, with the line where it is. Syntax errors
    surface here as yaml.YAMLError."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ConfigFileError(f"{path}: nested more than {MAX_YAML_DEPTH} levels "
                                      f"deep (line {line})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif (isinstance(event, yaml.ScalarEvent) and event.style is None
              and len(event.value) > 1000
              and event.value.lstrip("+-").replace("_", "").isdigit()):
            line = event.start_mark.line + 1 if event.start_mark else 0
            raise ConfigFileError(f"{path}: a number of {len(event.value)} digits (line "
                                  f"{line})")
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ConfigFileError(f"{path}: more than {MAX_YAML_ALIASES} aliases "
                                      f"(line {line})")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is `{}`). Raises
    ConfigFileError for an unreadable or too large file, a syntax error (with line and
    column), nesting deeper than `MAX_YAML_DEPTH` or more than `MAX_YAML_ALIASES` aliases
    (with the line), a key written twice in one mapping or a top level that is not a
    mapping."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{path}: cannot read the file: {e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        _check_shape(text, path)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: not valid YAML{yaml_error_text(e)}") from None
    except RecursionError:  # defensive: _check_shape bounds the depth
        raise ConfigFileError(f"{path}: nested too deeply") from None
    except ValueError as e:  # defensive: a value the constructor cannot convert
        raise ConfigFileError(f"{path}: a value cannot be read ({e})") from None
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
