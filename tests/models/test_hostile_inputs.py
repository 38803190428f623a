"""Issue 9's fault suite, bundles and configs: a generated corpus (hypothesis) of
malformed manifests, tars and YAML files. Every one is refused by `lineguard bundle
verify` and `lineguard appliance check-config` with exit 2 and one line on stderr, and
leaves nothing on disk (no unpacked files in the data directory, no temp folders).

Defects 5-7 on main at 5b3a016: a 100000x100000 input, a huge integer and deep nesting
crashed with a traceback; a tar whose members passed the checks was written out (about
1 GB) before the manifest refused it, and check-config left it in data_dir/bundles;
deeply nested YAML raised RecursionError in both CLIs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cli import main as appliance_main
from models.bundle import Bundle, unpack_bundle
from models.cli import main as bundle_main
from models.errors import ModelError
from tests.appliance.pipeline_helpers import tiny_bundle

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)
EXAMPLES = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


def _listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _bundle_files(bundle: Bundle) -> dict[str, bytes]:
    names = ["manifest.json", *bundle.manifest.files]
    return {name: (bundle.root / name).read_bytes() for name in names}


def _refused_by_both(tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
                     ) -> None:
    """`bundle verify` and `appliance check-config` both exit 2 with one line, and the
    data directory holds nothing afterwards."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    before = _listing(tmp_path)
    capsys.readouterr()
    assert bundle_main(["verify", str(archive)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert appliance_main(["check-config", "--bundle", str(archive), "--data-dir",
                           str(data_dir), "--skip-sources"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err, err
    assert _listing(tmp_path) == before  # nothing unpacked left behind


# -- manifests ---------------------------------------------------------------------------

def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = {"x": value}
    return value


HOSTILE_VALUES = st.one_of(
    st.integers(min_value=2**31, max_value=10**40),
    st.integers(max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: f != f or abs(f) > 1e7),
    st.text(min_size=300, max_size=400),
    st.builds(_deep, st.integers(min_value=2, max_value=50)),
    st.lists(st.integers(), min_size=5, max_size=8),
    st.none(),
)
FIELDS = [("version",), ("input", "height"), ("input", "width"), ("input", "batch"),
          ("postprocess", "max_detections"), ("postprocess", "max_candidates"),
          ("preprocess", "scale"), ("preprocess", "roi_xywh"), ("label",),
          ("lineage", "parent_version"), ("lineage", "training_config"), ("classes",),
          ("preprocess", "mean"), ("min_runtime",)]


@given(field=st.sampled_from(FIELDS), value=HOSTILE_VALUES)
@EXAMPLES
def test_generated_bad_manifest_fields_are_refused(
    tmp_path: Path, good: Bundle, capsys: pytest.CaptureFixture[str],
    field: tuple[str, ...], value: Any,
) -> None:
    data = json.loads((good.root / "manifest.json").read_text())
    node = data
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    files = _bundle_files(good)
    files["manifest.json"] = json.dumps(data).encode()
    case = tmp_path / f"case-{os.urandom(4).hex()}"
    case.mkdir()
    _refused_by_both(case, _tar(case / "bad.tar", files), capsys)


@pytest.mark.parametrize("text", [
    '{"input": {"height": 100000, "width": 100000}}',
    '{"version": 1' + "0" * 5000 + "}",
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "[" * 100_000,
    '{"name": "x", "version": NaN}',
    " " * (2 * 1024 * 1024) + "{}",
])
def test_hostile_manifest_text_is_refused(tmp_path: Path, good: Bundle, text: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    files = _bundle_files(good)
    files["manifest.json"] = text.encode()
    _refused_by_both(tmp_path, _tar(tmp_path / "bad.tar", files), capsys)


def test_an_input_that_does_not_fit_memory_is_refused_before_allocating(
    tmp_path: Path, good: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((good.root / "manifest.json").read_text())
    data["input"].update(height=8192, width=8192, batch=64)  # each bound alone is fine
    files = _bundle_files(good)
    files["manifest.json"] = json.dumps(data).encode()
    _refused_by_both(tmp_path, _tar(tmp_path / "bad.tar", files), capsys)
    with pytest.raises(ModelError, match="bytes"):
        unpack_bundle(tmp_path / "bad.tar", tmp_path / "out")


# -- tars --------------------------------------------------------------------------------

@given(extra=st.dictionaries(
    st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.(bin|onnx|png)", fullmatch=True),
    st.binary(max_size=64), min_size=1, max_size=4))
@EXAMPLES
def test_generated_unlisted_members_are_refused_before_writing(
    tmp_path: Path, good: Bundle, capsys: pytest.CaptureFixture[str],
    extra: dict[str, bytes],
) -> None:
    files = {**_bundle_files(good), **{k: v for k, v in extra.items()
                                        if k not in good.manifest.files}}
    case = tmp_path / f"case-{os.urandom(4).hex()}"
    case.mkdir()
    archive = _tar(case / "bad.tar", files)
    with pytest.raises(ModelError, match="not listed in the manifest"):
        unpack_bundle(archive, case / "out")
    assert not (case / "out").exists()
    _refused_by_both(case, archive, capsys)


def test_a_listed_member_with_wrong_content_leaves_nothing(
    tmp_path: Path, good: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _bundle_files(good)
    files["model.onnx"] = files["model.onnx"][:-1] + b"\x00"
    _refused_by_both(tmp_path, _tar(tmp_path / "bad.tar", files), capsys)


def test_unpacked_size_is_bounded_by_configuration(
    tmp_path: Path, good: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _tar(tmp_path / "good.tar", _bundle_files(good))
    config = tmp_path / "lineguard.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nmodel: {{bundle: {archive}, "
                      f"max_unpacked_bytes: 1048576}}\n")
    files = _bundle_files(good)  # padded with a listed 1 MiB file: over the bound
    data = json.loads(files["manifest.json"])
    pad = b"\x00" * (1024 * 1024)
    data["files"]["golden/pad.bin"] = hashlib.sha256(pad).hexdigest()
    files["golden/pad.bin"] = pad
    files["manifest.json"] = json.dumps(data).encode()
    _tar(archive, files)
    capsys.readouterr()
    assert appliance_main(["check-config", "--config", str(config), "--skip-sources"]) == 2
    err = capsys.readouterr().err.strip()
    assert "exceeds 1048576 bytes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()


# -- YAML --------------------------------------------------------------------------------

YAML_CASES = st.one_of(
    st.integers(min_value=40, max_value=3000).map(lambda n: "a: " + "[" * n + "]" * n),
    st.integers(min_value=40, max_value=3000).map(lambda n: "a: " + "{b: " * n + "1"
                                                 + "}" * n),
    st.integers(min_value=40, max_value=200).map(
        lambda n: "".join("  " * i + f"k{i}:\n" for i in range(n))),
    st.integers(min_value=1, max_value=3).map(
        lambda n: "a: &a [1]\n" + "".join(f"b{i}: &b{i} [*a, *a, *a]\n" for i in range(300))),
    st.sampled_from(["site: a\nsite: b\n", "a: [\n", "\t- x\n", "- just\n- a list\n",
                     "pipeline: {max_batch: 10" + "0" * 5000 + "}\n", "\x00\x01\x02",
                     "stations: " + "[" * 100_000]),
)


@given(text=YAML_CASES)
@EXAMPLES
def test_generated_bad_yaml_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / f"bad-{os.urandom(4).hex()}.yaml"
    path.write_text(text, encoding="utf-8")
    for main, args in ((appliance_main, ["check-config", "--config", str(path),
                                          "--skip-sources", "--skip-model"]),):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("config error: "), err
    path.unlink()


@pytest.mark.parametrize("cli", [["appliance", "check-config", "--skip-sources",
                                  "--skip-model", "--config"],
                                 ["cloud", "check-config", "--config"]])
def test_deep_yaml_in_a_real_process(tmp_path: Path, cli: list[str]) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lineguard", *cli, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "nested more than" in err and "line 1" in err
    assert "Traceback" not in err
