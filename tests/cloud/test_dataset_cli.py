"""`lineguard cloud dataset ...` and `lineguard cloud line token` in-process, on the
default database (an SQLite file in the working directory) and a config's
`datasets.root`: output, and one error line with exit 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud.cli import main
from cloud.config import load_config
from cloud.datasets.inbox import SampleInbox
from cloud.datasets.index import DatasetIndex
from cloud.datasets.service import open_database
from protocol.samples import SampleMeta
from tests.cloud.dataset_helpers import (
    CLASSES,
    copy_dataset,
    linesim_dataset,
    meta,
    png_bytes,
    source_yaml,
)

__all__ = ["source_yaml"]  # fixture


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cloud.yaml"
    path.write_text(f"datasets: {{root: {tmp_path / 'ds'}, val_fraction: 0.25}}\n", "utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--log-level", "warning"])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_list_show_union_materialize(config, source_yaml, tmp_path, capsys):
    c = ["--config", str(config)]
    code, out, err = run(capsys, "dataset", "import", str(source_yaml), "--name", "parts", *c)
    assert code == 0, err
    assert out.startswith("parts@1 ") and "20 images (train" in out
    assert f"classes {', '.join(CLASSES)}; split hash:0.25" in out
    code, out, _ = run(capsys, "dataset", "import", str(source_yaml.parent), "--name", "kept",
                       "--split", "keep", *c)
    assert code == 0 and "20 images (train 16, val 4)" in out and "split kept" in out
    more = linesim_dataset(tmp_path / "more", seed=7, n_train=5, n_val=1)
    assert run(capsys, "dataset", "import", str(more), "--name", "more", *c)[0] == 0
    code, out, _ = run(capsys, "dataset", "union", "parts@1,more", "--name", "all", *c)
    assert code == 0
    assert out.startswith("all@1 ") and "26 images" in out and "from parts@1, more@1" in out
    code, out, _ = run(capsys, "dataset", "list", *c)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "all@1", "kept@1", "more@1", "parts@1"]
    assert "from parts@1, more@1" in out.splitlines()[0]
    code, out, _ = run(capsys, "dataset", "show", "parts", *c)
    assert code == 0
    assert "fingerprint" in out and "parents      -" in out
    for name in CLASSES:
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip())
    code, out, _ = run(capsys, "dataset", "show", "parts@1", "--json", *c)
    doc = json.loads(out)
    assert doc["ref"] == "parts@1" and doc["classes"] == CLASSES
    code, out, _ = run(capsys, "dataset", "materialize", "parts@1", str(tmp_path / "m"), *c)
    assert code == 0 and out.strip() == str(tmp_path / "m" / "data.yaml")
    code, out, _ = run(capsys, "dataset", "holdout", "parts", *c)
    assert code == 0 and out.strip().endswith("data.yaml")
    assert (tmp_path / "lineguard-cloud.db").is_file()


def test_union_conflict_of_splits_is_one_error_line(config, source_yaml, capsys):
    c = ["--config", str(config)]
    assert run(capsys, "dataset", "import", str(source_yaml), "--name", "a", *c)[0] == 0
    assert run(capsys, "dataset", "import", str(source_yaml), "--name", "b", "--split", "keep",
               *c)[0] == 0
    code, out, err = run(capsys, "dataset", "union", "a,b", "--name", "ab", *c)
    assert code == 2 and out == ""
    assert err.startswith("error: image ") and "a@1" in err and "b@1" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "fragment"), [
    (["dataset", "show", "nothing"], "error: no dataset named 'nothing'"),
    (["dataset", "show", "bad name!"], "error: dataset name 'bad name!'"),
    (["dataset", "import", "/no/such/place", "--name", "x"], "error: /no/such/place: no such"),
    (["dataset", "accept", "plant1/line1", "--into", "x", "--classes", "a"],
     "error: plant1/line1: the inbox is empty"),
])
def test_errors_are_one_line_and_exit_2(config, capsys, argv, fragment):
    code, out, err = run(capsys, *argv, "--config", str(config))
    assert code == 2 and out == ""
    assert err.startswith(fragment), err
    assert len(err.strip().splitlines()) == 1


def test_bad_import_names_the_file(config, source_yaml, tmp_path, capsys):
    broken = copy_dataset(source_yaml, tmp_path / "broken")
    label = sorted((broken.parent / "labels" / "val").iterdir())[0]
    label.write_text("9 0.5 0.5 0.1 0.1\n")
    code, out, err = run(capsys, "dataset", "import", str(broken), "--name", "x",
                         "--config", str(config))
    assert code == 2 and out == ""
    assert err == f"error: {label}:1: class 9 is not one of 0..3\n"
    assert run(capsys, "dataset", "list", "--config", str(config))[1] == "no datasets\n"


def test_bad_site_line_is_a_usage_error(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["dataset", "inbox", "Plant/Line", "--config", str(config)])
    assert info.value.code == 2
    assert "expected SITE/LINE" in capsys.readouterr().err


def test_token_inbox_accept(config, capsys):
    code, out, _ = run(capsys, "line", "token", "plant1/line1", "--config", str(config))
    assert code == 0 and "shown once" in out
    cfg = load_config(config)
    engine = open_database(cfg)
    try:
        inbox = SampleInbox(DatasetIndex(engine, cfg.datasets.root))
        labels = [{"kind": "missed", "class_name": "pit", "box_xyxy": [4, 4, 20, 16]}]
        for n in range(3):
            doc = meta(f"s-{n}", labels=labels if n else [])
            inbox.add("plant1", "line1", SampleMeta.model_validate_json(json.dumps(doc)),
                      png_bytes(n))
    finally:
        engine.dispose()
    code, out, _ = run(capsys, "dataset", "inbox", "--config", str(config))
    assert out == "plant1/line1: 3 waiting, 0 accepted\n"
    code, out, err = run(capsys, "dataset", "accept", "plant1/line1", "--into", "line1",
                         "--classes", ",".join(CLASSES), "--config", str(config))
    assert code == 0, err
    assert out.startswith("line1@1 ") and "accepted 2 sample(s) from plant1/line1, 1 skipped" in out
    code, out, _ = run(capsys, "dataset", "inbox", "--config", str(config))
    assert out == "plant1/line1: 1 waiting, 2 accepted\n"
    code, out, _ = run(capsys, "dataset", "gc", "--older-than-s", "0", "--config", str(config))
    assert out == "removed 0 unreferenced object(s)\n"
