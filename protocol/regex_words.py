"""Regular expressions of config and wire fields, said in words for people.

`describe_pattern(r"^[a-z0-9][a-z0-9_-]{0,62}$")` gives "1 to 63 characters: lowercase
letters, digits, `_` and `-`, starting with a lowercase letter or digit". Only the
shape our identifier patterns have is understood: anchors, character classes of ranges
and single characters, literal characters and the quantifiers `?`, `*`, `+`, `{n}`,
`{m,n}`. Anything else (groups, alternation, negated classes, escapes) gives None, and
the caller shows the pattern itself.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# Ranges with a name; other characters are named one by one, in backticks.
_RANGES: tuple[tuple[str, str, str], ...] = (
    (string.ascii_lowercase, "lowercase letters", "lowercase letter"),
    (string.ascii_uppercase, "uppercase letters", "uppercase letter"),
    (string.digits, "digits", "digit"),
)
_UNBOUNDED = -1


@dataclass(frozen=True)
class _Atom:
    chars: frozenset[str]
    min_count: int
    max_count: int  # _UNBOUNDED for no upper bound


def _parse_class(body: str) -> frozenset[str] | None:
    """The characters of a class body such as `a-z0-9_.-` (no negation, no escapes)."""
    if not body or body.startswith("^") or "\\" in body or "[" in body:
        return None
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if ord(lo) > ord(hi):
                return None
            chars.update(chr(c) for c in range(ord(lo), ord(hi) + 1))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return frozenset(chars)


def _parse_quantifier(pattern: str, i: int) -> tuple[int, int, int] | None:
    """(min, max, next index) of the quantifier at `pattern[i]`, (1, 1, i) if none."""
    if i >= len(pattern):
        return 1, 1, i
    c = pattern[i]
    if c == "?":
        return 0, 1, i + 1
    if c == "*":
        return 0, _UNBOUNDED, i + 1
    if c == "+":
        return 1, _UNBOUNDED, i + 1
    if c != "{":
        return 1, 1, i
    end = pattern.find("}", i)
    if end < 0:
        return None
    lo, sep, hi = pattern[i + 1:end].partition(",")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        return None
    max_count = int(hi) if hi else (_UNBOUNDED if sep else int(lo))
    return int(lo), max_count, end + 1


def _parse(pattern: str) -> list[_Atom] | None:
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        return None
    body = pattern[1:-1]
    atoms: list[_Atom] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "[":
            end = body.find("]", i + 1)
            if end < 0:
                return None
            chars = _parse_class(body[i + 1:end])
            i = end + 1
        elif c in "\\()|.^$?*+{}]":
            return None
        else:
            chars, i = frozenset(c), i + 1
        if chars is None:
            return None
        quantifier = _parse_quantifier(body, i)
        if quantifier is None:
            return None
        lo, hi, i = quantifier
        atoms.append(_Atom(chars, lo, hi))
    return atoms or None


def describe_chars(chars: frozenset[str], singular: bool = False) -> str:
    """`lowercase letters, digits, `_` and `-`` (`singular`: `a lowercase letter or
    digit`-style, without the article)."""
    rest = set(chars)
    words: list[str] = []
    lower = set(string.ascii_lowercase)
    upper = set(string.ascii_uppercase)
    if lower | upper <= rest:
        words.append("letter" if singular else "letters")
        rest -= lower | upper
    for members, plural, one in _RANGES:
        if set(members) <= rest:
            words.append(one if singular else plural)
            rest -= set(members)
    words += [f"`{c}`" if c != "`" else "a backtick" for c in sorted(rest)]
    joiner = " or " if singular else " and "
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + joiner + words[-1]


def _one_of(chars: frozenset[str]) -> str:
    """`a lowercase letter or digit`, `an uppercase letter`, `` `_` or `-` ``."""
    words = describe_chars(chars, singular=True)
    if words.startswith("`"):
        return words
    return ("an " if words[0] in "aeiou" else "a ") + words


def _count(lo: int, hi: int) -> str:
    if hi == _UNBOUNDED:
        return f"{lo} or more"
    if lo == hi:
        return str(lo)
    return f"{lo} to {hi}"


def _plural(n: int) -> str:
    return "character" if n == 1 else "characters"


def describe_pattern(pattern: str) -> str | None:
    """The anchored regular expression `pattern` in words, or None when it is not of
    the simple shape this module understands (see the module docstring)."""
    atoms = _parse(pattern)
    if atoms is None:
        return None
    if len(atoms) == 1:
        a = atoms[0]
        return f"{_count(a.min_count, a.max_count)} {_plural(a.max_count)}: " \
               f"{describe_chars(a.chars)}"
    first, rest = atoms[0], atoms[1]
    if (len(atoms) == 2 and first.min_count == first.max_count == 1
            and first.chars <= rest.chars):
        lo = rest.min_count + 1
        hi = rest.max_count + 1 if rest.max_count != _UNBOUNDED else _UNBOUNDED
        text = f"{_count(lo, hi)} {_plural(hi)}: {describe_chars(rest.chars)}"
        if first.chars != rest.chars:
            text += f", starting with {_one_of(first.chars)}"
        return text
    parts = []
    for a in atoms:
        if a.min_count == a.max_count == 1:
            parts.append(_one_of(a.chars))
        else:
            parts.append(f"{_count(a.min_count, a.max_count)} of "
                         f"{describe_chars(a.chars)}")
    return ", then ".join(parts)
