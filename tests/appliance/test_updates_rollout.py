"""The closed loop with the cloud: the release side publishes from its registry and
starts a canary rollout (cloud/release, cloud/rollout); the canary appliance refuses a
bad but validly signed bundle; its `model` report (over a real Mosquitto, bridged into
the fleet store as the collector would) halts the rollout; line-2 never downloads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.app import App
from appliance.capture import ReplaySource
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, Received
from cloud.registry import ModelRegistry
from cloud.release.publish import assign_line, publish_release
from cloud.release.store import ReleaseStore
from cloud.rollout.service import RolloutService
from protocol import encode
from tests.appliance.pipeline_helpers import WHITE
from tests.appliance.telemetry_helpers import Collector, telemetry_cfg
from tests.appliance.update_rig import make_bundle, state_of, updates_config, wait_until
from tests.cloud.registry.helpers import migrated_engine
from tests.cloud.release.rollout_helpers import BOUNDS
from tests.cloud.release.test_publish import gate
from tests.cloud.release.tuf_helpers import new_repository, serve_directory
from tests.mqtt_broker import start_broker

pytestmark = [pytest.mark.timeout(120), pytest.mark.mqtt]


def test_canary_refuses_a_blind_bundle_the_rollout_halts_line_2_never_downloads_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = migrated_engine(url)
    repo, _ = new_repository(tmp_path / "cloud")
    store = ReleaseStore(engine)
    registry = ModelRegistry(engine, tmp_path / "registry")
    v1 = make_bundle(tmp_path / "b", 1)
    blind = make_bundle(tmp_path / "b", 3, kind="blind")
    registry.add(v1.root, state="approved", source="import")
    registry.add(blind.root, source="retrain")
    registry.record_gate("tiny", 3, gate(True))  # the gate passed it: signed all the same
    for version in (1, 3):
        publish_release(repo, registry, store, "tiny", version, by="alice")
    for line in ("line-1", "line-2"):
        assign_line(repo, store, "site-1", line, "tiny", 1, stage="manual", by="alice")
    root_file = tmp_path / "root.json"
    root_file.write_bytes(repo.trusted_root())
    fleet = FleetStore(DatabaseConfig(url=url))
    with start_broker(tmp_path) as broker, serve_directory(repo.root_dir) as url:
        collector = Collector(broker.port, client_id="collector")
        collector.connect()
        apps = {}
        for line in ("line-1", "line-2"):
            cfg = updates_config(tmp_path, line, v1.root, url, root_file, line=line)
            cfg = cfg.model_copy(update={"telemetry": telemetry_cfg(broker.port)})
            apps[line] = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)})
            apps[line].start()
        try:
            for app in apps.values():  # both took their manual assignment of tiny:1
                wait_until(lambda a=app: state_of(a.cfg).last_sequence == 1, 20, "tiny:1")
            rollouts = RolloutService(repo, store, fleet, None, BOUNDS)
            rollout = rollouts.start("tiny", 3, ["site-1/line-1"], by="alice")
            assert rollout.stages == [["site-1/line-1"], ["site-1/line-2"]]
            agent = apps["line-1"].updates.agent  # type: ignore[union-attr]
            assert agent is not None
            agent.hint("hint")  # what the rollout's cmd/update does

            def refused_report() -> bool:
                return any(m.update is not None and m.update.state == "failed"
                           for m in collector.kind("model") if m.line == "line-1")
            wait_until(refused_report, 30, "the canary's refusal on the model topic")
            for message in collector.kind("model"):  # the collector's part
                fleet.ingest([Received(message, encode(message), 0)], collector_id="test")
            [after] = rollouts.step()
            assert after.state == "halted", after
            assert after.reason is not None and "refused at step shadow" in after.reason
            for app in apps.values():
                assert app.pipeline is not None and app.pipeline.model is not None
                assert app.pipeline.model.version_id == "tiny:1"
            apps["line-2"].updates.agent.check("poll")  # type: ignore[union-attr]
        finally:
            for app in apps.values():
                app.stop()
            collector.close()
            fleet.close()
    line2 = apps["line-2"].cfg.updates_dir
    assert not [p for p in (line2 / "bundles").glob("tiny-3-*")]
    assert state_of(apps["line-2"].cfg).active.version_id == "tiny:1"  # type: ignore[union-attr]
    assert store.current_assignment("site-1", "line-2").version == 1  # type: ignore[union-attr]
