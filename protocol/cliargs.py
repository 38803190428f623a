"""Command-line conventions every `lineguard` command follows (one spelling for all).

- `HelpFormatter`: keeps descriptions as written and appends ``(default: X)`` to an
  option's help, except where there is nothing to show (None, an off switch) or the
  help text already says its default in words.
- `add_logging_arguments`: ``--log-level`` (choices, so a typo is a usage error) and
  ``--log-format text|json``; `configure_logging_from` applies them (logs on stderr).
  `add_nested_logging_arguments` gives the leaves of a command group (``lineguard cloud
  db upgrade``) the same flags without overwriting what was given before the leaf.
- list options take one argument, comma-separated (``--providers cuda,cpu``), parsed by
  `comma_list`; counts and sizes are checked by `positive_int` / `nonnegative_int`,
  durations (``30m``, ``1h``, ``7d``) read by `duration_s`.
"""

from __future__ import annotations

import argparse

from protocol.logsetup import LOG_FORMATS, LOG_LEVELS, configure_logging

__all__ = [
    "HelpFormatter",
    "add_logging_arguments",
    "add_nested_logging_arguments",
    "comma_list",
    "configure_logging_from",
    "duration_s",
    "nonnegative_int",
    "positive_int",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions kept as written; every option's help shows its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def add_logging_arguments(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    """Add ``--log-level`` and ``--log-format`` to `parser` (see `configure_logging_from`)."""
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default_level,
                        help="least severe log messages shown (logs go to stderr)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="log lines as text, or one JSON object per line (time, level, "
                        "logger, message, exception) for journald and log shippers")


def add_nested_logging_arguments(group: argparse.ArgumentParser,
                                 default_level: str = "info") -> None:
    """Give every leaf command under `group` (which has `add_logging_arguments` itself)
    ``--log-level`` and ``--log-format`` too, so they may follow the subcommand.

    Their default is SUPPRESS: not given, they leave the group's value alone (a nested
    parser's default would overwrite it). Leaves that already have them are skipped."""
    stack = [group]
    while stack:
        parser = stack.pop()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            stack += list(dict.fromkeys(action.choices.values()))
        if parser is group or subs or "--log-level" in parser._option_string_actions:
            continue
        parser.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                            help=f"least severe log messages shown (logs go to stderr; "
                            f"default: {default_level})")
        parser.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                            help="log lines as text, or one JSON object per line "
                            "(default: text)")


def configure_logging_from(args: argparse.Namespace) -> None:
    """Set up logging from the ``--log-level`` / ``--log-format`` of parsed `args`."""
    configure_logging(args.log_level, args.log_format)


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (an argparse type; empty items dropped)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
    return items


def positive_int(text: str) -> int:
    """An integer >= 1 (an argparse type)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (an argparse type)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


_DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration_s(text: str) -> float:
    """A duration such as ``90s``, ``30m``, ``1h``, ``7d``, ``2w`` (or plain seconds) in
    seconds, > 0 (an argparse type)."""
    value = text.strip().lower()
    scale = _DURATION_UNITS_S.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 90s, 30m, 1h, 7d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return seconds
