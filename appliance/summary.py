"""What a run did: `RunSummary`, printed by `lineguard appliance run` and `lineguard
demo` (`--json` prints `as_dict`), built from the pipeline's final statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.pipeline import PipelineStats


@dataclass(frozen=True)
class RunSummary:
    """What a run did (printed by the CLI, `--json` prints `as_dict`)."""

    stopped_by: str
    """"frames" (budget used up), "signal" (stop event), or "sources_ended"."""
    duration_s: float
    frames: int
    verdicts: dict[str, int]
    uninspected: dict[str, int]
    defects: dict[str, int]
    throughput_fps: float
    latency_ms: dict[str, dict[str, float]]
    stations: dict[str, dict[str, Any]]
    model: dict[str, Any] | None
    providers: list[str]
    batches: int
    mean_batch: float
    store_path: str
    store_inspections: int
    """Rows in the store's inspections table after the run (all runs of this database)."""
    late_results: int
    engine_failures: int
    engine_fallbacks: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(s: PipelineStats, *, stopped_by: str, duration_s: float, store_path: Path,
              store_inspections: int) -> RunSummary:
    """The summary of a run that lasted `duration_s` (wall seconds) and ended with the
    statistics `s`; throughput counts inspected parts (`pass` and `fail`)."""
    inspected = s.verdicts["pass"] + s.verdicts["fail"]
    return RunSummary(
        stopped_by=stopped_by,
        duration_s=round(duration_s, 3),
        frames=s.frames,
        verdicts=s.verdicts,
        uninspected=s.uninspected,
        defects=s.defects,
        throughput_fps=round(inspected / duration_s, 2) if duration_s > 0 else 0.0,
        latency_ms=s.latency_ms,
        stations={k: asdict(v) for k, v in s.stations.items()},
        model=s.model.as_dict() if s.model else None,
        providers=list(s.providers),
        batches=s.batches,
        mean_batch=s.mean_batch,
        store_path=str(store_path),
        store_inspections=store_inspections,
        late_results=s.late_results,
        engine_failures=s.engine_failures,
        engine_fallbacks=s.engine_fallbacks,
    )
