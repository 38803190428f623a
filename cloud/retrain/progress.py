"""One progress line per training epoch: epoch/total, ETA, losses, val mAP50.

`epoch_line` is pure (tested as a table); `epoch_callback` adapts it to Ultralytics'
`on_fit_epoch_end` event, whose trainer carries the epoch, the mean losses and the
validation metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)


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
    reported: set[int] = set()

    def on_fit_epoch_end(trainer: Any) -> None:
        try:
            epoch, total = int(trainer.epoch) + 1, int(trainer.epochs)
            if epoch in reported or epoch > total:
                # Ultralytics fires the event once more for its final validation of the
                # best weights.
                map50 = _map50(trainer)
                if map50 is not None:
                    say(f"best weights: val mAP50 {map50:.3f}")
                return
            reported.add(epoch)
            line = epoch_line(epoch, total, clock() - start, _losses(trainer),
                              _map50(trainer))
        except (AttributeError, TypeError, ValueError) as e:
            # A trainer of another Ultralytics version: lose the line, not the training.
            logger.warning("no progress line for this epoch: %s", e)
            return
        say(line)

    return on_fit_epoch_end


def _losses(trainer: Any) -> dict[str, float]:
    """The epoch's mean losses: Ultralytics 8.4 keeps them as a dict of name -> tensor,
    earlier versions as one tensor beside `loss_names`."""
    tloss = getattr(trainer, "tloss", None)
    if tloss is None:
        return {}
    if isinstance(tloss, Mapping):
        items = [(str(k), float(v)) for k, v in tloss.items()]
    else:
        names = [str(n) for n in getattr(trainer, "loss_names", ())]
        items = list(zip(names, (float(v) for v in tloss.reshape(-1)), strict=False))
    return {name.removesuffix("_loss"): value for name, value in items}


def _map50(trainer: Any) -> float | None:
    metrics = getattr(trainer, "metrics", None) or {}
    value = metrics.get("metrics/mAP50(B)")
    return float(value) if value is not None else None
