"""Bundle directories and archives: integrity checks and hostile tar files."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from models.bundle import (
    MANIFEST,
    MODEL,
    Bundle,
    file_sha256,
    load_bundle,
    open_bundle,
    pack_bundle,
    unpack_bundle,
    write_bundle,
)
from models.errors import BundleIntegrityError, ManifestError, ModelError, UnsafeArchiveError
from models.manifest import Manifest


def base_manifest() -> Manifest:
    return Manifest.model_validate(
        {
            "name": "tiny",
            "version": 2,
            "label": "tiny-v2",
            "classes": ["dent"],
            "input": {"height": 64, "width": 64},
            "output": {},
            "lineage": {"created_at": "2026-01-01T00:00:00Z"},
        }
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "model.onnx").write_bytes(b"not really onnx, load_bundle does not parse it")
    (sources / "a.png").write_bytes(b"\x89PNG fake")
    (sources / "g.json").write_text('{"images": []}')
    return write_bundle(
        tmp_path / "bundle",
        base_manifest(),
        {
            MODEL: sources / "model.onnx",
            "golden/img_000.png": sources / "a.png",
            "golden/golden.json": sources / "g.json",
        },
    )


def test_write_and_load_bundle(bundle: Bundle) -> None:
    files = bundle.manifest.files
    assert set(files) == {MODEL, "golden/img_000.png", "golden/golden.json"}
    assert files[MODEL] == file_sha256(bundle.model_path)
    assert load_bundle(bundle.root) == bundle
    assert not list(bundle.root.glob(".*tmp*"))  # atomic write left nothing behind


def test_write_bundle_refuses_a_non_empty_directory(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not empty"):
        write_bundle(bundle.root, base_manifest(), {MODEL: bundle.model_path})
    with pytest.raises(ModelError, match=r"must include model\.onnx"):
        write_bundle(tmp_path / "x", base_manifest(), {})
    with pytest.raises(ModelError, match=r"'\.\./up'"):
        write_bundle(
            tmp_path / "x", base_manifest(), {MODEL: bundle.model_path, "../up": bundle.model_path}
        )


def test_missing_file_is_named(bundle: Bundle) -> None:
    (bundle.root / "golden" / "img_000.png").unlink()
    with pytest.raises(
        BundleIntegrityError, match=r"golden/img_000\.png: listed in the manifest but missing"
    ):
        load_bundle(bundle.root)


def test_sha256_mismatch_is_named(bundle: Bundle) -> None:
    with (bundle.root / MODEL).open("ab") as fh:
        fh.write(b"!")
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx: sha256 mismatch"):
        load_bundle(bundle.root)
    load_bundle(bundle.root, verify_files=False)  # existence-only check passes


def test_unlisted_file_is_named(bundle: Bundle) -> None:
    (bundle.root / "golden" / "extra.png").write_bytes(b"x")
    with pytest.raises(BundleIntegrityError, match=r"golden/extra\.png: .* not listed"):
        load_bundle(bundle.root)


def test_symlinked_file_is_rejected(bundle: Bundle, tmp_path: Path) -> None:
    target = bundle.root / "golden" / "img_000.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleIntegrityError, match="symbolic link"):
        load_bundle(bundle.root)


def test_manifest_with_unknown_field(bundle: Bundle) -> None:
    data = json.loads((bundle.root / MANIFEST).read_text())
    data["postprocess"]["magic"] = True
    (bundle.root / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"postprocess\.magic: unknown field"):
        load_bundle(bundle.root)


def test_missing_bundle_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleIntegrityError, match="bundle not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="manifest not found"):
        load_bundle(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_pack_is_deterministic_and_round_trips(bundle: Bundle, tmp_path: Path, suffix: str) -> None:
    first = pack_bundle(bundle.root, tmp_path / f"a{suffix}")
    os.utime(bundle.model_path, (0, 12345))  # mtimes must not leak into the archive
    second = pack_bundle(bundle.root, tmp_path / f"b{suffix}")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted([MANIFEST, *bundle.manifest.files])
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
    unpacked = unpack_bundle(first, tmp_path / "out")
    assert load_bundle(unpacked).manifest == bundle.manifest
    opened = open_bundle(first, tmp_path / "work")
    assert opened.manifest == bundle.manifest


def test_open_bundle_accepts_a_single_top_level_folder(bundle: Bundle, tmp_path: Path) -> None:
    archive = tmp_path / "nested.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle.root, arcname="tiny-v2")
    assert open_bundle(archive, tmp_path / "work").manifest == bundle.manifest


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


HOSTILE = [
    pytest.param([_file("../x")], "'../x': path escapes with '..'", id="dotdot"),
    pytest.param([_file("golden/../../x")], "escapes with '..'", id="nested-dotdot"),
    pytest.param([_file("/etc/cron.d/x")], "'/etc/cron.d/x': absolute path", id="absolute"),
    pytest.param(
        [_special("model.onnx", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link", id="symlink"
    ),
    pytest.param(
        [_file("manifest.json"), _special("model.onnx", tarfile.LNKTYPE, "manifest.json")],
        "hard link",
        id="hardlink",
    ),
    pytest.param([_special("dev", tarfile.CHRTYPE)], "'dev': device file", id="chardev"),
    pytest.param([_special("blk", tarfile.BLKTYPE)], "device file", id="blockdev"),
    pytest.param([_special("pipe", tarfile.FIFOTYPE)], "FIFO", id="fifo"),
    pytest.param([_file("big.bin", b"x" * 2048)], "'big.bin': 2048 bytes exceeds", id="oversized"),
    pytest.param(
        [_file("a", b"x" * 800), _file("b", b"x" * 800)], "'b': archive content exceeds", id="total"
    ),
    pytest.param([_file("a"), _file("./a")], "'./a': duplicate name", id="duplicate"),
    pytest.param([_file("a\\..\\..\\x")], "escapes with '..'", id="backslash-dotdot"),
    pytest.param([_file("a\\b")], "bad file name", id="backslash"),
]


@pytest.mark.parametrize(("members", "message"), HOSTILE)
def test_hostile_archives_are_rejected_naming_the_member(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    archive = _tar_with(tmp_path / "evil.tar", _file("ok.txt"), *members)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=message.replace(".", r"\.").replace("(", r"\(")):
        unpack_bundle(archive, dest, max_member_bytes=1024, max_total_bytes=1500)
    assert not dest.exists() or not any(dest.iterdir())  # nothing was written
    assert not (tmp_path / "x").exists()


def test_unreadable_archives(tmp_path: Path) -> None:
    with pytest.raises(BundleIntegrityError, match="bundle archive not found"):
        unpack_bundle(tmp_path / "none.tar", tmp_path / "d")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"definitely not a tar archive" * 40)
    with pytest.raises(BundleIntegrityError, match="not a readable tar archive"):
        unpack_bundle(junk, tmp_path / "d")


def test_truncated_archive(bundle: Bundle, tmp_path: Path) -> None:
    archive = pack_bundle(bundle.root, tmp_path / "b.tar")
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        inside_model = tar.getmember(MODEL).offset_data + 5
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:inside_model])
    with pytest.raises(BundleIntegrityError):
        unpack_bundle(cut, tmp_path / "d")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    # cut between members: tarfile sees a shorter archive; the bundle check catches it
    short = tmp_path / "short.tar"
    short.write_bytes(data[: inside_model - 5 - 512])
    with pytest.raises(BundleIntegrityError, match="missing"):
        open_bundle(short, tmp_path / "work")


def test_unpack_refuses_a_non_empty_destination(bundle: Bundle, tmp_path: Path) -> None:
    archive = pack_bundle(bundle.root, tmp_path / "b.tar")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="is not empty"):
        unpack_bundle(archive, dest)
    assert (dest / "keep.txt").read_text() == "mine"
