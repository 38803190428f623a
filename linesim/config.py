"""Configuration of the simulated line: geometry, rate, defect mix and drift knobs.

Plain frozen dataclasses (linesim imports nothing of lineguard's), validated in
`__post_init__` so a bad knob fails where it is set, naming the knob.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

CLASSES: tuple[str, ...] = ("scratch", "pit", "crack", "stain")
"""Defect classes, in label-index order."""

Variant = Literal["plate", "disc", "ribbed"]
"""Product variants: the trained demo model knows `plate` and `disc`; `ribbed` is new."""


class ConfigError(ValueError):
    """A linesim knob is out of range; the message names the knob."""


def _check(cond: bool, knob: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"linesim: {knob} {why}")


@dataclass(frozen=True)
class Drift:
    """Image drift applied after rendering, as a camera or a plant would cause it.

    All defaults are "no drift". Geometric knobs move the ground-truth boxes with the
    image, so labels stay exact.
    """

    brightness: float = 0.0
    """Additive offset, as a fraction of full scale (-1..1)."""
    contrast: float = 1.0
    """Gain around mid-grey (0.1..3)."""
    blur_sigma_px: float = 0.0
    """Gaussian defocus, sigma in pixels (0 = sharp)."""
    noise_sigma: float = 0.0
    """Gaussian sensor noise, sigma in grey levels (0..100)."""
    shift_px: tuple[float, float] = (0.0, 0.0)
    """Camera shift (x, y) in pixels."""
    rotation_deg: float = 0.0
    """Camera roll in degrees, about the image centre."""
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-channel gains in B, G, R order (white balance drift)."""
    dirty_lens: float = 0.0
    """Fraction (0..1) of the lens covered by soft dark smudges (occlusion)."""
    variant: Variant | None = None
    """Force every part to this product variant (a new product on the line)."""
    onset_part: int = 0
    """The drift applies from this part id on (earlier parts are undrifted): a change
    at a known point of the stream, e.g. a new product variant from part 600."""

    def __post_init__(self) -> None:
        _check(-1.0 <= self.brightness <= 1.0, "brightness", "must be within -1..1")
        _check(0.1 <= self.contrast <= 3.0, "contrast", "must be within 0.1..3")
        _check(0.0 <= self.blur_sigma_px <= 20.0, "blur_sigma_px", "must be within 0..20")
        _check(0.0 <= self.noise_sigma <= 100.0, "noise_sigma", "must be within 0..100")
        _check(-45.0 <= self.rotation_deg <= 45.0, "rotation_deg", "must be within -45..45")
        _check(len(self.shift_px) == 2, "shift_px", "must be (x, y)")
        _check(len(self.color_cast) == 3, "color_cast", "must be (b, g, r) gains")
        _check(all(0.0 < g <= 3.0 for g in self.color_cast), "color_cast", "gains must be 0..3")
        _check(0.0 <= self.dirty_lens <= 1.0, "dirty_lens", "must be within 0..1")
        _check(isinstance(self.onset_part, int) and self.onset_part >= 0, "onset_part",
               "must be a whole number >= 0")

    @property
    def is_identity(self) -> bool:
        """True when no knob is set (`onset_part` alone changes nothing)."""
        return replace(self, onset_part=0) == Drift()

    def at(self, part_id: int) -> Drift:
        """The drift part `part_id` sees: this one from `onset_part` on, else none."""
        return self if part_id >= self.onset_part else Drift()

    @classmethod
    def parse(cls, text: str) -> Drift:
        """Parse `knob=value,knob=value` (tuples as `a:b[:c]`), e.g.
        `brightness=0.2,blur_sigma_px=1.5,shift_px=10:0`. Raises ConfigError."""
        kwargs: dict[str, object] = {}
        names = {f.name for f in fields(cls)}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            _check(bool(sep), item, "must be knob=value")
            _check(key in names, key, f"is not a drift knob (known: {', '.join(sorted(names))})")
            try:
                if key == "variant":
                    kwargs[key] = value
                elif key == "onset_part":
                    kwargs[key] = int(value)
                elif ":" in value:
                    kwargs[key] = tuple(float(v) for v in value.split(":"))
                else:
                    kwargs[key] = float(value)
            except ValueError as e:
                raise ConfigError(f"linesim: {key} is not a number: {value!r}") from e
        if "variant" in kwargs:
            _check(kwargs["variant"] in ("plate", "disc", "ribbed"), "variant",
                   "must be plate, disc or ribbed")
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LineConfig:
    """A simulated line: camera resolution, part rate, defect mix, drift, seed."""

    width_px: int = 640
    height_px: int = 480
    parts_per_minute: float = 600.0
    seed: int = 0
    defect_free_fraction: float = 0.3
    """Share of parts rendered without any defect."""
    max_defects_per_part: int = 4
    variants: tuple[Variant, ...] = ("plate", "disc")
    drift: Drift = field(default_factory=Drift)

    def __post_init__(self) -> None:
        _check(64 <= self.width_px <= 8192, "width_px", "must be within 64..8192")
        _check(64 <= self.height_px <= 8192, "height_px", "must be within 64..8192")
        _check(0.0 < self.parts_per_minute <= 60_000.0, "parts_per_minute",
               "must be within 0..60000 (exclusive of 0)")
        _check(0.0 <= self.defect_free_fraction <= 1.0, "defect_free_fraction",
               "must be within 0..1")
        _check(1 <= self.max_defects_per_part <= 16, "max_defects_per_part",
               "must be within 1..16")
        _check(len(self.variants) > 0, "variants", "must name at least one variant")

    @property
    def frame_interval_s(self) -> float:
        """Seconds between two parts passing the camera."""
        return 60.0 / self.parts_per_minute

    def with_drift(self, drift: Drift) -> LineConfig:
        """A copy of this line with `drift` applied."""
        return replace(self, drift=drift)
