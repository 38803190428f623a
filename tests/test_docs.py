"""The docs inside the repository (issue 8 item 8): the config reference is generated
from the models and committed fresh, the example configs pass `check-config`, the
operations page names every event and alarm the appliance records, and no link leaves
the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from appliance.cli import main as appliance_main
from appliance.records import UninspectedReason
from cloud.cli import main as cloud_main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REGENERATE = ("{ lineguard appliance config-reference; echo; "
              "lineguard cloud config-reference; } > docs/config-reference.md")


def _reference(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert appliance_main(["config-reference"]) == 0
    appliance = capsys.readouterr().out
    assert cloud_main(["config-reference"]) == 0
    return appliance + "\n" + capsys.readouterr().out


def test_config_reference_is_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert committed == _reference(capsys), (
        f"docs/config-reference.md is stale; regenerate it with:\n  {REGENERATE}")


def test_config_reference_covers_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    text = _reference(capsys)
    for heading, key in [("## `pipeline`", "`max_wait_ms`"), ("## `store.images`",
                                                               "`quota_bytes`"),
                         ("## `stations[].source` with `kind: stream`", "`url`"),
                         ("## `collector.broker`", "`client_id`"), ("## `api`", "`token_file`")]:
        section = text[text.index(heading):]
        section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
        assert f"| {key} |" in section, (heading, key)
    row = next(line for line in text.splitlines() if line.startswith("| `max_wait_ms` |"))
    assert row == ("| `max_wait_ms` | number | milliseconds | `2.0` | 0 to 1000 | Longest a "
                   "frame waits for others to fill its batch (from its arrival). |")
    site = next(line for line in text.splitlines() if line.startswith("| `site` |"))
    assert "lowercase letters, digits, `-` and `_`" in site and "^[a-z" not in site


def test_appliance_example_passes_check_config(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    example = REPO / "examples" / "appliance.yaml"
    assert appliance_main(["check-config", "--config", str(example), "--skip-model"]) == 0
    assert "config ok: site plant-1, line press-7, 2 station(s)" in capsys.readouterr().out
    # The same file with a bundle that exists here: the model loads and its golden set
    # reproduces (the example's own bundle path is the plant's).
    demo = REPO / "models" / "demo" / "bundle"
    assert appliance_main(["check-config", "--config", str(example), "--bundle", str(demo),
                           "--data-dir", str(tmp_path)]) == 0
    assert "golden set reproduces" in capsys.readouterr().out


def test_cloud_example_passes_check_config(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    example = REPO / "examples" / "cloud.yaml"
    assert cloud_main(["check-config", "--config", str(example), "--skip-secrets"]) == 0
    assert "sections: collector, api; secret files not read" in capsys.readouterr().out
    # With its secret files in place, the secrets are read too.
    text = example.read_text(encoding="utf-8")
    (tmp_path / "collector.secret").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "api.token").write_text("0123456789abcdef-token\n", encoding="utf-8")
    local = tmp_path / "cloud.yaml"
    local.write_text(text.replace("/etc/lineguard-cloud", str(tmp_path)), encoding="utf-8")
    assert cloud_main(["check-config", "--config", str(local)]) == 0
    (tmp_path / "api.token").write_text("short\n", encoding="utf-8")
    assert cloud_main(["check-config", "--config", str(local)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_cloud_check_config_names_a_bad_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cloud.yaml"
    path.write_text("stroe: {path: fleet.db}\n", encoding="utf-8")
    assert cloud_main(["check-config", "--config", str(path)]) == 2
    assert "stroe" in capsys.readouterr().err


def _recorded_events_and_alarms() -> tuple[set[str], set[str]]:
    """Event kinds and alarm codes the appliance's code records, read from its source:
    `_event("kind", ...)`, `events.record("kind", ...)`, `event_row(at, "kind", ...)`,
    `alarm="code"`, `alarms.append("code")`, `raise_alarm("code", ...)` and
    `AlarmChange(at, "code", ...)`."""
    kinds: set[str] = set()
    alarms: set[str] = set()
    for path in sorted((REPO / "appliance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            strings = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str)
                       else None for a in node.args]
            if name in ("_event", "record") and strings and strings[0]:
                kinds.add(strings[0])
            if name == "event_row" and len(strings) > 1 and strings[1]:
                kinds.add(strings[1])
            if name == "raise_alarm" and strings and strings[0]:
                alarms.add(strings[0])
            if name == "AlarmChange" and len(strings) > 1 and strings[1]:
                alarms.add(strings[1])
            if (name == "append" and isinstance(func, ast.Attribute)
                    and getattr(func.value, "id", "") == "alarms" and strings and strings[0]):
                alarms.add(strings[0])
            for kw in node.keywords:
                if kw.arg == "alarm" and isinstance(kw.value, ast.Constant):
                    alarms.add(str(kw.value.value))
    return kinds, alarms


def test_operations_page_explains_every_event_and_alarm() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    kinds, alarms = _recorded_events_and_alarms()
    assert {"alarm", "source_state", "image_skipped"} <= kinds  # the scan finds them
    assert {"camera_lost", "no_model", "engine_failure", "falling_behind", "disk_low",
            "store_unwritable"} <= alarms
    reasons = {r.value for r in UninspectedReason}
    missing = sorted(n for n in kinds | alarms | reasons if f"`{n}`" not in text)
    assert not missing, f"docs/operations.md does not explain: {missing}"


def test_docs_exist_and_links_stay_in_the_repository() -> None:
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "architecture.md", "operations.md",
                                       "config-reference.md"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\.\./shared/\w+\.md", text), \
            f"{page.name} points at docs outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(REPO), f"{page.name}: {target} leaves the repo"
            assert resolved.exists(), f"{page.name}: broken link {target}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# lineguard\n\n```sh\nmake demo")  # still starts with them
    for doc in ("docs/architecture.md", "docs/operations.md", "docs/config-reference.md"):
        assert f"]({doc})" in readme, doc
