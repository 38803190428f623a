"""`lineguard cloud models ...` end to end on an SQLite registry (the command line's
parsing, output and exit codes; the registry itself is tested on both back ends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.cli import main
from tests.cloud.registry.helpers import DEMO_BUNDLE, DEMO_WEIGHTS


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.yaml"
    path.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'cloud.db'}'}}\n"
                    f"registry: {{root: {tmp_path / 'registry'}}}\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_list_show_promote(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    code, out, _ = run(capsys, "models", "import", str(DEMO_BUNDLE), "--weights",
                       str(DEMO_WEIGHTS), "--holdout", "linesim-holdout@1", "--state",
                       "approved", "--by", "ana", "--config", c)
    assert code == 0 and "registered demo@1 (linesim-yolo11pico-256) as approved" in out
    code, out, _ = run(capsys, "models", "list", "--config", c)
    assert code == 0 and "demo@1" in out and "approved" in out
    code, out, _ = run(capsys, "models", "list", "--json", "--config", c)
    assert code == 0 and '"model": "demo@1"' in out and '"runs_on": []' in out
    code, out, _ = run(capsys, "models", "show", "demo@1", "--config", c)
    assert code == 0
    for fragment in ("holdout    linesim-holdout@1", "gate       not run", "by ana",
                     "runs on    - (no line reports it)", "metrics    mAP50 0.822"):
        assert fragment in out
    code, _, err = run(capsys, "models", "show", "demo@2", "--config", c)
    assert code == 2 and "no model demo@2" in err
    code, out, _ = run(capsys, "models", "promote", "demo@1", "--reason", "ok", "--config", c)
    assert code == 0 and "demo@1 is approved" in out


def test_import_as_candidate_cannot_be_promoted_without_a_gate(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    assert run(capsys, "models", "import", str(DEMO_BUNDLE), "--config", c)[0] == 0
    code, _, err = run(capsys, "models", "promote", "demo@1", "--reason", "x", "--config", c)
    assert code == 2 and "gate has not passed it" in err


@pytest.mark.parametrize(("args", "message"), [
    (["models", "show", "demo"], "is not MODEL@VERSION"),
    (["models", "promote", "demo@1"], "--reason"),
    (["models", "import", "x", "--state", "released"], "invalid choice"),
    (["retrain", "--from", "demo@x", "--data", "d"], "is not MODEL@VERSION"),
    (["retrain", "--from", "demo@1", "--data", "d", "--epochs", "0"], "--epochs"),
])
def test_bad_arguments(config: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                       message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--config", str(config)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_retrain_refuses_bad_inputs_before_training(
        config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    c = str(config)
    code, _, err = run(capsys, "retrain", "--from", "demo@1", "--data", str(tmp_path),
                       "--config", c)
    assert code == 2 and "no model demo@1" in err
    assert run(capsys, "models", "import", str(DEMO_BUNDLE), "--config", c)[0] == 0
    code, _, err = run(capsys, "retrain", "--from", "demo@1", "--data", str(tmp_path),
                       "--config", c)
    assert code == 2 and "has no weights" in err
    code, _, err = run(capsys, "models", "import", str(DEMO_BUNDLE), "--weights",
                       str(DEMO_WEIGHTS), "--config", c)
    assert code == 2 and "already registered with different content" in err


def test_worker_once_runs_the_queue_and_exits(config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.config import load_config
    from cloud.registry.open import open_registry
    from cloud.retrain.requests import RetrainQueue

    cfg = load_config(config)
    registry = open_registry(cfg.database, cfg.registry)
    queue = RetrainQueue(registry.engine, min_interval_h=24)
    request = queue.request_retrain("plant1/line-1", "drift: test")
    assert request is not None
    code, _, _ = run(capsys, "retrain-worker", "--once", "--config", str(config))
    assert code == 0
    done = queue.get(request.id)
    assert done.state == "failed" and done.outcome is not None
    assert "knows no model" in done.outcome
    registry.engine.dispose()
