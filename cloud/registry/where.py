"""Where a model runs, from the fleet store's lines (each line's newest `status` or
`model` report): pure functions over `LineView`s."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.fleet.views import LineView


def running_on(lines: Sequence[LineView], name: str, version: int) -> list[str]:
    """`site/line` of every line whose current model is name@version, sorted."""
    return sorted(f"{v.site}/{v.line}" for v in lines
                  if v.model is not None and v.model.name == name
                  and v.model.version == version)


def model_of_line(lines: Sequence[LineView], site: str, line: str) -> tuple[str, int] | None:
    """(name, version) of the model `site/line` runs, or None (unknown line or model)."""
    for v in lines:
        if v.site == site and v.line == line and v.model is not None:
            return v.model.name, v.model.version
    return None
