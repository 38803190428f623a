"""The frame path: a frame's story from the camera to its stored verdict, in one place.

    source_stage.py      SourceStage, one per station: reads the camera (ResilientSource,
                         which numbers frames), opens the frame in the verdict book,
                         crops the station ROI, hands a Job on
    preprocess_stage.py  PreprocessStage (worker mode, GPU): preprocesses off the engine
    batcher.py           DynamicBatcher: the engine's inbox (max_batch / max_wait_ms)
    infer_stage.py       InferStage: preprocess into the model's input buffer, run ORT
    post_stage.py        PostprocessStage: decode + NMS, judge (judge.py), close frames
    verdicts.py          VerdictBook: the only thing that closes a frame; one verdict each,
                         deadlines; delivers to the store, the statistics and listeners
    engine.py            Engine / LoadedModel: verified, warmed ONNX Runtime sessions
    slot.py              ModelSlot: the model the next batch uses (hot swap)
    health.py, events.py engine-failure alarms; events to the store and listeners
    inbox.py, job.py     bounded queues between stages; what travels in them
    supervisor.py        SupervisedThread: a stage that dies is restarted with backoff
    stats.py             live counters and latency percentiles
    pipeline.py          Pipeline: runs, supervises, drains and reports the stages

`appliance.pipeline.wiring.build_pipeline` composes the stages (the App calls it);
nothing else builds them.
"""

from appliance.pipeline.job import BatchInfo
from appliance.pipeline.pipeline import Pipeline
from appliance.pipeline.source_stage import Station
from appliance.pipeline.stats import PipelineStats

__all__ = ["BatchInfo", "Pipeline", "PipelineStats", "Station"]
