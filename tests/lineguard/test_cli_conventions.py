"""Issue 8 items 2 (`--version`), 13 (logs) and 14 (help): what a new user meets on
every command line. Walks the real parsers of every `lineguard` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from lineguard.cli import COMMANDS
from lineguard.cli import main as lineguard_main
from protocol.app_version import app_version
from protocol.cliargs import HelpFormatter, comma_list
from protocol.logsetup import LOG_LEVELS, PlainTextWriter, configure_logging

REPO = Path(__file__).resolve().parents[2]


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(`lineguard ... command`, parser) for every command and subcommand."""
    stack = [(f"lineguard {name}", importlib.import_module(module).build_parser())
             for name, (module, _) in COMMANDS.items()]
    while stack:
        prog, parser = stack.pop()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prog, parser
        for action in subs:
            stack += [(f"{prog} {name}", sub) for name, sub in action.choices.items()]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


PARSERS = dict(_parsers())


def test_every_command_is_walked() -> None:
    assert {"lineguard appliance run", "lineguard appliance check-config", "lineguard demo",
            "lineguard bundle wrap", "lineguard eval", "lineguard linesim export",
            "lineguard cloud train", "lineguard cloud quantize", "lineguard cloud serve",
            } <= set(PARSERS)


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_flag_has_help_and_shows_its_default(prog: str) -> None:
    parser = PARSERS[prog]
    assert issubclass(parser.formatter_class, HelpFormatter), prog
    missing = [a.dest for a in _options(parser) if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"{prog}: no help for {missing}"
    formatter = parser._get_formatter()
    for action in _options(parser):
        if action.option_strings and action.default not in (None, False):
            # what --help prints for it: "(default: %(default)s)" or its own words
            assert "default" in str(formatter._get_help_string(action)), (prog, action.dest)


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_log_flags_everywhere_and_unknown_levels_rejected(prog: str) -> None:
    by_dest = {a.dest: a for a in _options(PARSERS[prog])}
    assert tuple(by_dest["log_level"].choices or ()) == LOG_LEVELS, prog
    assert tuple(by_dest["log_format"].choices or ()) == ("text", "json"), prog


def test_appliance_rejects_an_unknown_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--skip-model", "--log-level", "loud"])
    assert exc.value.code == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_list_options_are_one_comma_separated_argument(prog: str) -> None:
    for action in _options(PARSERS[prog]):
        assert action.nargs not in ("+", "*"), (prog, action.dest)
        if action.type is comma_list:
            assert str(action.metavar).endswith("[,NAME...]"), (prog, action.dest)


def test_comma_list() -> None:
    assert comma_list("cuda, cpu,") == ["cuda", "cpu"]
    with pytest.raises(argparse.ArgumentTypeError):
        comma_list(" , ")


def test_train_help_says_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    help_text = " ".join(PARSERS["lineguard cloud train"].format_help().split())
    for fragment in ("lineguard-pico", "(default: 256)", "(default: 40)",
                     "human label (default: <name>-<first 8 hex digits"):
        assert fragment in help_text


# --- item 2: --version ------------------------------------------------------------------


def test_version_is_the_installed_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    installed = metadata.version("lineguard")
    assert app_version() == installed
    assert lineguard_main(["--version"]) == 0
    assert capsys.readouterr().out == f"lineguard {installed}\n"
    out = subprocess.run([sys.executable, "-m", "lineguard", "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == f"lineguard {installed}"


# --- item 13: logs ----------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_log_lines(capsys: pytest.CaptureFixture[str], root_logging: None) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("lineguard.test")
    log.debug("not shown")
    log.info("frame %s: \x1b[31mred\x1b[0m", 7)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    out, err = capsys.readouterr()
    assert out == ""
    first, second = (json.loads(line) for line in err.splitlines())
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"], first["message"]) == (
        "INFO", "lineguard.test", "frame 7: red")
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exception"]


def test_text_logs_lose_colours_off_a_terminal(
    capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    configure_logging("warning", "text")
    logging.getLogger("x").warning("\x1b[1mbold\x1b[0m")
    logging.getLogger("x").info("quiet")
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(" WARNING x: bold\n")


def test_plain_text_writer_keeps_the_last_frame_of_each_line() -> None:
    class Sink:
        text = ""

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

    sink = Sink()
    writer = PlainTextWriter(sink)  # type: ignore[arg-type]
    writer.write("\x1b[34mEpoch\x1b[0m 1/2\n")
    for pct in (10, 50, 100):
        writer.write(f"\r\x1b[K train: {pct}%")
    writer.write("\n")
    writer.write("\r\x1b[K val: 3%")
    writer.write("\r\x1b[K")  # a bar that clears itself leaves nothing
    writer.write("done")
    writer.close()
    assert sink.text == "Epoch 1/2\n train: 100%\ndone\n"


def test_appliance_logs_on_stderr_as_json_whatever_json_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    from appliance.cli import main
    from tests.appliance.pipeline_helpers import tiny_bundle
    from tests.appliance.test_cli import write_config

    config = write_config(tmp_path, tiny_bundle(tmp_path / "bundles"))
    for json_flag in ([], ["--json"]):
        assert main(["run", "--config", str(config), "--frames", "5", *json_flag,
                     "--log-format", "json", "--status-interval-s", "60"]) == 0
        out, err = capsys.readouterr()
        logs = [json.loads(line) for line in err.splitlines() if line.strip()]
        assert logs, "the appliance logged nothing"
        assert all({"time", "level", "logger", "message"} <= set(e) for e in logs)
        assert not any('"logger"' in line for line in out.splitlines())
        if json_flag:
            assert json.loads(out.strip().splitlines()[-1])["frames"] == 5


def test_ultralytics_logs_go_through_ours_without_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    pytest.importorskip("ultralytics")
    from cloud.training.ultralytics_env import import_ultralytics, ultralytics_output

    import_ultralytics(tmp_path / "yolo_config")
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.tqdm import TQDM

    configure_logging("info", "json")
    with ultralytics_output():
        LOGGER.info(colorstr("bold", "optimizer:") + " SGD")
        for _ in TQDM(range(3), desc=colorstr("train")):
            pass
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\r" not in out
    assert json.loads(err.splitlines()[-1])["message"] == "optimizer: SGD"
    assert out.count("\n") == 1 and "train" in out
