"""`lineguard cloud release|rollout|rollback` end to end in-process, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cloud.cli import main
from cloud.registry import ModelRegistry
from tests.cloud.registry.helpers import DEMO_BUNDLE, demo_copy, migrated_engine
from tests.cloud.release.tuf_helpers import Line, serve_directory


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_release_commands(database_url: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "tuf"
    code, out, err = _run(capsys, "release", "init", str(repo))
    assert code == 0, err
    assert err.count("WARNING: the private") == 6
    assert "keep only its public key here" in err
    keys = tmp_path / "tuf-keys"
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": database_url},
        "registry": {"root": str(tmp_path / "registry")},
        "release": {"repository_dir": str(repo), "signers_file": str(keys / "signers.json"),
                    "rollout": {"bounds": {"health_window_s": 60}}},
    }))
    c = ("--config", str(config))
    # Registered directly: `models import` (cloud/cli_models.py) leaves its engine open.
    engine = migrated_engine(database_url)
    registry = ModelRegistry(engine, tmp_path / "registry")
    registry.add(DEMO_BUNDLE, state="approved", source="import")
    registry.add(demo_copy(tmp_path / "b2", version=2).root, source="retrain")
    engine.dispose()

    code, out, err = _run(capsys, "release", "publish", "demo@2", *c)
    assert code == 2 and "it is candidate" in err
    code, out, err = _run(capsys, "release", "publish", "demo@1", "--by", "alice", *c)
    assert code == 0 and "bundles/demo/1/demo-1.tar" in out, err
    for line in ("line-1", "line-2"):
        code, out, err = _run(capsys, "release", "assign", f"plant1/{line}", "demo@1", *c)
        assert code == 0 and "(sequence 1)" in out, err
    code, out, err = _run(capsys, "release", "assign", "line-1", "demo@1", *c)
    assert code == 2 and "not SITE/LINE" in err

    code, out, err = _run(capsys, "rollout", "start", "demo@1", "--canary", "plant1/line-1",
                          "--by", "alice", *c)
    assert code == 0, err
    rollout_id = out.split()[1].rstrip(":")
    code, out, err = _run(capsys, "rollout", "status", rollout_id, "--json", *c)
    status = json.loads(out)
    assert status["state"] == "active" and status["stages"][0] == ["plant1/line-1"]
    code, out, err = _run(capsys, "rollout", "halt", rollout_id, "--reason", "test", *c)
    assert code == 0 and "halted" in out, err
    code, out, err = _run(capsys, "rollout", "status", *c)
    assert "halted by" in out and "reverted plant1/line-1" in out
    code, out, err = _run(capsys, "rollout", "status", "ro-nope", *c)
    assert code == 2 and "no rollout ro-nope" in err

    code, out, err = _run(capsys, "rollback", "plant1/line-2", *c)
    assert code == 2 and "never assigned another version" in err
    code, out, err = _run(capsys, "rollback", "plant1/line-2", "--to", "1", *c)
    assert code == 0 and "(sequence 2)" in out, err

    code, out, err = _run(capsys, "release", "refresh", "--force", *c)
    assert code == 0 and "timestamp" in out, err
    code, out, err = _run(capsys, "release", "status", *c)
    timestamp_key = next(x for x in out.splitlines() if x.startswith("timestamp")).split()[-1]
    code, out, err = _run(capsys, "release", "rotate-root", "--revoke", timestamp_key,
                          "--keys-dir", str(keys), *c)
    assert code == 0 and "root version 2" in out, err
    code, out, err = _run(capsys, "release", "rotate-key", "deploy", "--keys-dir", str(keys),
                          *c)
    assert code == 0 and "targets version 2: deploy key" in out, err
    code, out, err = _run(capsys, "release", "refresh", "--force", *c)
    assert code == 0, err
    with serve_directory(repo) as url:
        client = Line(url, tmp_path / "client", (repo / "metadata" / "1.root.json").read_bytes())
        got = json.loads(client.fetch("deploy/plant1/line-2.json"))
    assert (got["version"], got["sequence"], got["stage"]) == (1, 2, "rollback")


def test_init_refuses_keys_inside_the_repository(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "release", "init", str(tmp_path / "r"), "--keys-dir",
                        str(tmp_path / "r" / "keys"))
    assert code == 2 and "must not be inside" in err
    assert _run(capsys, "release", "init", str(tmp_path / "r"))[0] == 0
    code, _, err = _run(capsys, "release", "init", str(tmp_path / "r"))
    assert code == 2 and "already holds a TUF repository" in err
