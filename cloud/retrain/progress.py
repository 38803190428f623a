"""One progress line per training epoch: epoch/total, ETA, losses, val mAP50.

`epoch_line` is pure (tested as a table); `epoch_callback` adapts it to Ultralytics'
`on_fit_epoch_end` event, whose trainer carries the epoch, the mean losses and the
validation metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def epoch_line(epoch: int, total: int, elapsed_s: float, losses: Mapping[str, float],
               map50: float | None) -> str:
    """`epoch` is 1-based; the ETA extrapolates the mean epoch time so far."""
    eta = elapsed_s / epoch * (total - epoch) if epoch > 0 else 0.0
    loss_text = " ".join(f"{name} {value:.3f}" for name, value in losses.items())
    val = f"val mAP50 {map50:.3f}" if map50 is not None else "val mAP50 -"
    return (f"epoch {epoch}/{total} elapsed {_duration(elapsed_s)} ETA {_duration(eta)} "
            f"loss {loss_text or '-'} {val}")


def epoch_callback(say: Callable[[str], None],
                   clock: Callable[[], float] = time.monotonic) -> Callable[[Any], None]:
    """An `on_fit_epoch_end` callback that reports each epoch through `say`."""
    start = clock()

    def on_fit_epoch_end(trainer: Any) -> None:
        names = [str(n).removesuffix("_loss") for n in getattr(trainer, "loss_names", ())]
        tloss = getattr(trainer, "tloss", None)
        if isinstance(tloss, dict):  # newer Ultralytics: {loss name: mean} per epoch
            names = [str(n).removesuffix("_loss") for n in tloss]
            values = [float(v) for v in tloss.values()]
        else:
            values = [float(v) for v in tloss.reshape(-1)] if tloss is not None else []
        metrics = getattr(trainer, "metrics", None) or {}
        map50 = metrics.get("metrics/mAP50(B)")
        say(epoch_line(int(trainer.epoch) + 1, int(trainer.epochs), clock() - start,
                       dict(zip(names, values, strict=False)),
                       float(map50) if map50 is not None else None))

    return on_fit_epoch_end
