"""The per-epoch progress line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cloud.retrain.progress import epoch_callback, epoch_line


@pytest.mark.parametrize(("epoch", "total", "elapsed", "losses", "map50", "expected"), [
    (1, 10, 30.0, {"box": 1.5, "cls": 2.25}, 0.4,
     "epoch 1/10 elapsed 0m30s ETA 4m30s loss box 1.500 cls 2.250 val mAP50 0.400"),
    (10, 10, 300.0, {"box": 1.0}, None,
     "epoch 10/10 elapsed 5m00s ETA 0m00s loss box 1.000 val mAP50 -"),
    (2, 200, 7200.0, {}, 0.0,
     "epoch 2/200 elapsed 2h00m00s ETA 198h00m00s loss - val mAP50 0.000"),
])
def test_epoch_line(epoch: int, total: int, elapsed: float, losses: dict[str, float],
                    map50: float | None, expected: str) -> None:
    assert epoch_line(epoch, total, elapsed, losses, map50) == expected


def test_callback_reads_the_trainer() -> None:
    lines: list[str] = []
    times = iter([100.0, 160.0])
    callback = epoch_callback(lines.append, clock=lambda: next(times))
    trainer = SimpleNamespace(epoch=0, epochs=3, loss_names=("box_loss", "cls_loss", "dfl_loss"),
                              tloss=np.array([1.0, 2.0, 3.0]),
                              metrics={"metrics/mAP50(B)": 0.25})
    callback(trainer)
    assert lines == ["epoch 1/3 elapsed 1m00s ETA 2m00s loss box 1.000 cls 2.000 dfl 3.000 "
                     "val mAP50 0.250"]


def test_callback_reads_ultralytics_8_4_loss_dict() -> None:
    lines: list[str] = []
    times = iter([0.0, 10.0])
    callback = epoch_callback(lines.append, clock=lambda: next(times))
    trainer = SimpleNamespace(epoch=1, epochs=2, loss_names=("box", "cls", "dfl"),
                              tloss={"box": np.float32(1.5), "cls": np.float32(0.5),
                                     "dfl": np.float32(1.0)}, metrics={})
    callback(trainer)
    assert lines == ["epoch 2/2 elapsed 0m10s ETA 0m00s loss box 1.500 cls 0.500 dfl 1.000 "
                     "val mAP50 -"]


def test_the_final_validation_is_not_another_epoch() -> None:
    lines: list[str] = []
    callback = epoch_callback(lines.append, clock=lambda: 5.0)
    for epoch in (0, 1, 2, 1):  # Ultralytics 8.4: once more after the last epoch
        callback(SimpleNamespace(epoch=epoch, epochs=2, tloss=None,
                                 metrics={"metrics/mAP50(B)": 0.5}))
    assert [line.split()[1] for line in lines[:2]] == ["1/2", "2/2"]
    assert lines[2:] == ["best weights: val mAP50 0.500", "best weights: val mAP50 0.500"]
