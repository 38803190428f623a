"""Readiness: can the appliance judge parts right now? The hook for the panel's `/readyz`
(a later issue): ready means a model is active and the pipeline runs; otherwise the
reasons are alarm codes an operator can look up in docs/operations.md (`no_model`,
`store_unwritable`: the store cannot commit verdicts).

Liveness (`/healthz`: the process answers) is not this: an appliance started without a
model (`model.allow_start_without_model`) is alive, records every part as
`uninspected: no_model`, and is not ready until an update activates a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.pipeline.stats import PipelineStats


@dataclass(frozen=True, slots=True)
class Readiness:
    """`ready`, or the `reasons` it is not (codes: `not_started`, `no_model`,
    `store_unwritable`)."""

    ready: bool
    reasons: tuple[str, ...] = ()


def readiness_of(stats: PipelineStats, *, store_unwritable: bool = False) -> Readiness:
    """Readiness from one pipeline snapshot and the store's state (pure). A store that
    cannot commit verdicts (disk full, reserve spent) makes the appliance not ready: its
    verdicts would be lost."""
    reasons = (("no_model",) if stats.model is None else ()) + \
        (("store_unwritable",) if store_unwritable else ())
    return Readiness(ready=not reasons, reasons=reasons)
