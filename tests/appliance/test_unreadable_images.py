"""Issue 9, defect 10: every file an image-folder source lists is a frame with exactly one
verdict. A zero-byte file and a text file named .png are `uninspected: unreadable`, a
truncated JPEG or PNG is `uninspected: corrupt` (never half-decoded and judged), and a
1x1 PNG or a frame of another size than the station's is `uninspected: wrong_size`.

On main at 5b3a016 the first two were skipped with a log warning (no row, no event), the
truncated JPEG was judged `pass` and the 1x1 PNG too. Runs the real CLI in its own
process on real files and reads the real SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from models.bundle import Bundle
from models.imagefile import ImageFileError, decode_image
from tests.appliance.pipeline_helpers import tiny_bundle

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


def _encoded(ext: str, width: int = 96, height: int = 64) -> bytes:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return bytes(data.tobytes())


FILES: dict[str, tuple[bytes, str]] = {
    # name: (content, expected verdict or "uninspected: reason")
    "p01.png": (_encoded(".png"), "judged"),
    "p02.png": (b"", "uninspected: unreadable"),
    "p03.png": (b"this is a text file, not an image\n", "uninspected: unreadable"),
    "p04.jpg": (_encoded(".jpg")[:-600], "uninspected: corrupt"),
    "p05.png": (_encoded(".png")[:-300], "uninspected: corrupt"),
    "p06.png": (_encoded(".png", 1, 1), "uninspected: wrong_size"),
    "p07.png": (_encoded(".png", 80, 64), "uninspected: wrong_size"),  # not 96x64
    "p08.jpg": (_encoded(".jpg"), "judged"),
}


def _run(tmp_path: Path, bundle: Bundle) -> dict[str, object]:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (data, _) in FILES.items():
        (folder / name).write_bytes(data)
    config = {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "frame_wh": [96, 64],
                      "source": {"kind": "folder", "path": str(folder),
                                 "part_id_from_name": True}}],
        "model": {"bundle": str(bundle.root)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block"},
        "store": {"flush_interval_ms": 10},
    }
    path = tmp_path / "lineguard.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "lineguard", "appliance", "run", "--config", str(path),
         "--json"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_every_listed_image_gets_exactly_one_verdict(tmp_path: Path, bundle: Bundle) -> None:
    summary = _run(tmp_path, bundle)
    db = next((tmp_path / "data").rglob("*.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT part_id, verdict, reason FROM inspections").fetchall()
        events = conn.execute("SELECT data FROM events WHERE kind = 'frame_unusable'"
                              ).fetchall()
    got = {part: verdict if reason is None else f"{verdict}: {reason}"
           for part, verdict, reason in rows}
    assert len(rows) == len(FILES)  # one row each, none lost, none twice
    for name, (_, expected) in FILES.items():
        part = Path(name).stem
        if expected == "judged":
            assert got[part] in ("pass", "fail"), (name, got[part])
        else:
            assert got[part] == expected, name
    unusable = {json.loads(d)["part_id"] for (d,) in events}
    assert unusable == {Path(n).stem for n, (_, e) in FILES.items() if e != "judged"}
    assert summary["frames"] == len(FILES)
    assert summary["uninspected"] == {"unreadable": 2, "corrupt": 2, "wrong_size": 2}


@pytest.mark.parametrize(("data", "fault"), [
    (b"", "unreadable"),
    (b"GIF89a not really", "unreadable"),
    (_encoded(".jpg")[:-1], "corrupt"),
    (_encoded(".png")[:-1], "corrupt"),
    (_encoded(".png")[:20], "corrupt"),
    # a PNG header that claims 100000 x 100000 pixels: refused before decoding
    (_encoded(".png")[:16] + (100000).to_bytes(4, "big") * 2 + _encoded(".png")[24:],
     "corrupt"),
])
def test_strict_decoding_names_the_fault(data: bytes, fault: str) -> None:
    with pytest.raises(ImageFileError) as info:
        decode_image(data, "x")
    assert info.value.fault == fault


def test_strict_decoding_reads_good_images() -> None:
    for ext in (".png", ".jpg", ".bmp"):
        image = decode_image(_encoded(ext), "x")
        assert image.shape == (64, 96, 3)
