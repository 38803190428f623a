"""Fully offline Ultralytics: the environment it needs, set before it is imported.

Ultralytics otherwise tries to download fonts, weights and packages at run time.
`import ultralytics` also sets OMP_NUM_THREADS=1 and cv2.setNumThreads(0) for the
whole process, which is why only cloud training code (never the appliance) calls this.

Its output is made ours too. Its logger writes coloured text to stdout through its own
handler, and Ultralytics (8.4) has no setting to turn colours off, so the ``ultralytics``
logger is routed through the root handler of `protocol.logsetup` (stderr, the command's
--log-level and --log-format, colour codes only on a terminal); its progress bars,
which redraw in place on stdout, become plain lines within `ultralytics_output` when
stdout is not a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from cloud.errors import CloudError
from protocol.logsetup import PlainTextWriter


class UltralyticsUnavailable(CloudError):
    """The `train` extra (torch, ultralytics) is not installed."""


def _font_source() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    candidate = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return candidate if candidate.is_file() else None


def prepare_offline_env(config_dir: Path) -> Path:
    """Point Ultralytics at a private config dir holding the font it would download,
    and forbid downloads and auto-installs. Returns `config_dir`."""
    config_dir.mkdir(parents=True, exist_ok=True)
    font = config_dir / "Arial.ttf"
    if not font.exists():
        src = _font_source()
        if src is not None:
            shutil.copyfile(src, font)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_VERBOSE", "True")
    return config_dir


def import_ultralytics(config_dir: Path, torch_threads: int | None = None) -> ModuleType:
    """Prepare the offline environment, import ultralytics and let it train with
    `torch_threads` threads (default: all cores; Ultralytics would use cores - 1, i.e. 1
    on a 2-core machine). Raises UltralyticsUnavailable with the install hint."""
    prepare_offline_env(config_dir)
    try:
        import ultralytics
        from ultralytics.utils import torch_utils
    except ImportError as e:
        raise UltralyticsUnavailable(
            "training needs the train extra: pip install -e '.[train]'"
        ) from e
    # Ultralytics trains with cores - 1 threads; on 2 cores that halves the speed.
    torch_utils.NUM_THREADS = torch_threads or (os.cpu_count() or 1)  # type: ignore[attr-defined]
    route_ultralytics_logs()
    return ultralytics


def route_ultralytics_logs() -> None:
    """Send the ``ultralytics`` logger's records to the root handlers (ours) at the root's
    level, instead of its own coloured stdout handler."""
    ul_logger = logging.getLogger("ultralytics")
    for handler in list(ul_logger.handlers):
        ul_logger.removeHandler(handler)
    ul_logger.setLevel(logging.NOTSET)
    ul_logger.propagate = True


@contextlib.contextmanager
def ultralytics_output() -> Iterator[None]:
    """While Ultralytics trains or exports: when stdout is not a terminal, what it
    prints there (progress bars redrawn with carriage returns, colours) arrives as
    plain lines, one per finished bar."""
    if sys.stdout.isatty():
        yield
        return
    plain = PlainTextWriter(sys.stdout)
    try:
        with contextlib.redirect_stdout(plain):
            yield
    finally:
        plain.close()
