"""Readiness: can the appliance judge parts right now? The hook for the panel's `/readyz`
(a later issue): ready means a model is active and the pipeline runs; otherwise the
reasons are alarm codes an operator can look up in docs/operations.md.

Liveness (`/healthz`: the process answers) is not this: an appliance started without a
model (`model.allow_start_without_model`) is alive, records every part as
`uninspected: no_model`, and is not ready until an update activates a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.pipeline.stats import PipelineStats


@dataclass(frozen=True, slots=True)
class Readiness:
    """`ready`, or the `reasons` it is not (codes: `not_started`, `no_model`)."""

    ready: bool
    reasons: tuple[str, ...] = ()


def readiness_of(stats: PipelineStats) -> Readiness:
    """Readiness from one pipeline snapshot (pure)."""
    reasons = ("no_model",) if stats.model is None else ()
    return Readiness(ready=not reasons, reasons=reasons)
