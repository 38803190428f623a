"""One station's drift window: sums, sums of squares and a uniform sample of frame
signal vectors, built into a `lineguard.drift/2` message when it closes.

Pure (no IO, no clock: times are passed in). Invariants:
- a frame is counted at most once: `add` ignores a frame whose seq is not above the
  last one counted (so a window restored after a restart never counts a frame twice);
- the state round-trips through `to_json` / `from_json` exactly (the appliance saves
  the partial window in its store and resumes it after a restart);
- the message id of a closed window is derived from (site, line, station, model,
  first seq): a window re-sent after a restart has the id of the first sending, so
  the cloud keeps one of them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from protocol.drift import DriftSketchV2, ReferenceInfo, SignalMoments
from protocol.fields import ModelRef

F32 = npt.NDArray[np.float32]


@dataclass
class WindowState:
    """The accumulated window (JSON-able)."""

    station: str
    model: dict[str, object] | None = None  # ModelRef as JSON
    first_seq: int | None = None
    last_seq: int = -1
    frames: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    image_names: list[str] = field(default_factory=list)
    image_sums: list[float] = field(default_factory=list)
    image_sq: list[float] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    output_sums: list[float] = field(default_factory=list)
    output_sq: list[float] = field(default_factory=list)
    samples: list[list[float]] = field(default_factory=list)
    seen_for_sample: int = 0
    model_frames: int = 0  # frames counted for this model so far (reference refinement)


class DriftWindow:
    """See the module docstring. Not thread-safe: one owner thread."""

    def __init__(self, station: str, *, window_frames: int, window_s: float,
                 sample_frames: int, seed: int = 0, state: WindowState | None = None) -> None:
        self.window_frames = window_frames
        self.window_s = window_s
        self.sample_frames = sample_frames
        self._rng = random.Random(seed)
        self.state = state or WindowState(station)
        self._model_cache: tuple[object, ModelRef] | None = None

    @property
    def model(self) -> ModelRef | None:
        m = self.state.model
        if m is None:
            return None
        # Parsed once per window (asked for on every frame): the state's dict is replaced,
        # never changed in place, when the window starts.
        if self._model_cache is None or self._model_cache[0] is not m:
            self._model_cache = (m, ModelRef.model_validate(m))
        return self._model_cache[1]

    def add(self, seq: int, at: float, model: ModelRef, image: F32 | None,
            image_names: tuple[str, ...], output: F32, output_names: tuple[str, ...]) -> bool:
        """Count one frame; False (and nothing changes) when `seq` was already counted.
        The caller closes the window first when the model or the signal names change."""
        st = self.state
        if seq <= st.last_seq:
            return False
        if st.frames == 0:
            st.first_seq, st.started_at = seq, at
            st.model = model.model_dump(mode="json")
            st.image_names = list(image_names) if image is not None else []
            st.image_sums = [0.0] * len(st.image_names)
            st.image_sq = [0.0] * len(st.image_names)
            st.output_names = list(output_names)
            st.output_sums = [0.0] * len(output_names)
            st.output_sq = [0.0] * len(output_names)
            st.samples, st.seen_for_sample = [], 0
        st.last_seq, st.ended_at = seq, max(at, st.ended_at)
        st.frames += 1
        st.model_frames += 1
        if image is not None and st.image_names:
            x = image.astype(np.float64)
            st.image_sums = (np.asarray(st.image_sums) + x).tolist()
            st.image_sq = (np.asarray(st.image_sq) + x * x).tolist()
            st.seen_for_sample += 1
            # Reservoir sampling: every frame of the window is equally likely to be kept.
            if len(st.samples) < self.sample_frames:
                st.samples.append(_row(x))
            else:
                j = self._rng.randrange(st.seen_for_sample)
                if j < self.sample_frames:
                    st.samples[j] = _row(x)
        y = output.astype(np.float64)
        st.output_sums = (np.asarray(st.output_sums) + y).tolist()
        st.output_sq = (np.asarray(st.output_sq) + y * y).tolist()
        return True

    def fits(self, model: ModelRef, image_names: tuple[str, ...] | None,
             output_names: tuple[str, ...]) -> bool:
        """Whether a frame of `model` with these signals can join the open window."""
        st = self.state
        if st.frames == 0:
            return True
        return (self.model == model and tuple(st.output_names) == output_names
                and (image_names is None or tuple(st.image_names) == image_names))

    def due(self, now: float) -> bool:
        st = self.state
        return st.frames >= self.window_frames or (
            st.frames > 0 and now - st.started_at >= self.window_s)

    def close(self, *, site: str, line: str, sent_at: float, signals_version: str,
              reference: ReferenceInfo | None) -> DriftSketchV2 | None:
        """The window as a message (None when empty), and a fresh window after it."""
        st = self.state
        if st.frames == 0 or st.first_seq is None:
            return None
        model = self.model
        key = f"{site}|{line}|{st.station}|{st.model}|{st.first_seq}"
        image = SignalMoments(names=st.image_names, sums=st.image_sums, sums_sq=st.image_sq,
                              samples=st.samples) if st.image_names else None
        output = SignalMoments(names=st.output_names, sums=st.output_sums,
                               sums_sq=st.output_sq) if st.output_names else None
        message = DriftSketchV2(
            msg_id=hashlib.sha256(key.encode("utf-8")).hexdigest()[:32],
            site=site, line=line, sent_at=datetime.fromtimestamp(sent_at, UTC),
            window_start=datetime.fromtimestamp(st.started_at, UTC),
            window_end=datetime.fromtimestamp(max(st.ended_at, st.started_at), UTC),
            station=st.station, ref_model=model, first_frame_id=st.first_seq,
            last_frame_id=st.last_seq, frame_count=st.frames,
            signals_version=signals_version, reference=reference, image=image, output=output)
        self.state = WindowState(st.station, last_seq=st.last_seq,
                                 model_frames=st.model_frames, model=st.model)
        return message

    def new_model(self) -> None:
        """The station switched models: the reference refinement counts from zero."""
        self.state.model_frames = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self.state))

    @staticmethod
    def state_from_json(text: str) -> WindowState:
        """Raises ValueError for text that is not a saved window."""
        try:
            return WindowState(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a saved drift window: {e}") from e


def _row(x: npt.NDArray[np.float64]) -> list[float]:
    """A sampled frame's signals as the message carries them (5 decimals)."""
    return [round(float(v), 5) for v in x]
