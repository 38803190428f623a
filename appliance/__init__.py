"""lineguard appliance: the edge process that inspects every part of one line.

    capture (stations: sources + ROI) -> batcher -> engine (ONNX Runtime) ->
    postprocess + judge -> verdict book -> store (SQLite, images), telemetry, panel

Modules: `app` (wires everything from `config`; the only place stages are built),
`pipeline` (stages on bounded queues, hot swap, stats), `intake` (stations, jobs),
`batcher` (dynamic batching), `engine` (loading and warming bundles), `inference` (the
engine and postprocess stages), `judge` (verdicts), `verdicts` (exactly one verdict per
frame, deadlines), `stage` (supervised threads), `stats` (live statistics),
`capture`, `store`, `telemetry`, `records`, `errors`; entry points `cli`
(`lineguard appliance ...`) and `demo` (`lineguard demo`).
"""
