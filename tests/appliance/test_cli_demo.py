"""`lineguard demo` runs the real appliance pipeline on the simulated line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.demo import main
from tests.appliance.pipeline_helpers import tiny_bundle

pytestmark = pytest.mark.timeout(120)


def test_demo_runs_the_pipeline_and_prints_fails_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tiny_bundle(tmp_path)
    assert main(["--bundle", str(bundle.root), "--frames", "6", "--data-dir",
                 str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bundle tiny v1 (tiny-v1) classes=dent,scratch,stain; 6 parts")
    assert "FAIL  found [dent" in out  # the tiny model flags every textured part
    assert "6 parts: " in out and "defective parts caught" in out
    assert "model tiny:1 (tiny-v1) on CPUExecutionProvider" in out
    assert (tmp_path / "data" / "lineguard.db").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bundle", "/no/such/bundle"], "bundle not found"),
        (["--drift", "nonsense=1"], "nonsense is not a drift knob"),
    ],
)
def test_demo_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                     message: str) -> None:
    if "--bundle" not in args:
        args = [*args, "--bundle", str(tiny_bundle(tmp_path).root)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
