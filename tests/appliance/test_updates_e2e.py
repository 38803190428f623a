"""Verified updates end to end: a real TUF repository over HTTP on 127.0.0.1, in-process
appliances on a replayed line, the update agent staging bundles (golden, shadow, swap,
health, commit or rollback), and the attacks it must refuse with the active model
untouched."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import ApplianceConfig
from appliance.updater.agent import UpdateAgent
from models.bundle import Bundle, pack_bundle
from tests.appliance.pipeline_helpers import WHITE
from tests.appliance.tuf_repo import TufTestRepo, serve
from tests.appliance.update_rig import (
    escape_tar,
    event_kinds,
    inspections,
    label_factory,
    make_bundle,
    state_of,
    updates_config,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@dataclass
class World:
    root: Path
    repo: TufTestRepo
    url: str
    root_file: Path
    v1: Bundle
    tars: dict[str, Path]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("update-bundles")
    return {"v1": make_bundle(root, 1), "v2": make_bundle(root, 2),
            "blind": make_bundle(root, 3, kind="blind"),
            "slow": make_bundle(root, 4, kind="slow"),
            "crash": make_bundle(root, 5, kind="crash")}


@pytest.fixture
def world(tmp_path: Path, bundles: dict[str, Bundle]) -> Iterator[World]:
    repo = TufTestRepo(tmp_path / "repo")
    tars = {}
    for key, b in bundles.items():
        if key == "v1":
            continue
        tars[key] = pack_bundle(b.root, tmp_path / "tars" / f"{key}.tar")
        repo.add_bundle(tars[key], "tiny", b.manifest.version)
    repo.publish()
    root_file = tmp_path / "trusted-root.json"
    root_file.write_bytes(repo.trusted_root)
    with serve(tmp_path / "repo") as url:
        yield World(tmp_path, repo, url, root_file, bundles["v1"], tars)


def start_app(w: World, name: str, line: str = "line-1", **updates: object) -> App:
    cfg = updates_config(w.root, name, w.v1.root, w.url, w.root_file, line=line, **updates)
    app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)},
              detector_factory=label_factory())
    app.start()
    return app


def events_of(app: App) -> list[tuple[str, str]]:
    if app.store is not None:
        app.store.flush()
    return event_kinds(app.cfg)


def agent_of(app: App) -> UpdateAgent:
    assert app.updates is not None and app.updates.agent is not None
    return app.updates.agent


def active(cfg: ApplianceConfig) -> str | None:
    state = state_of(cfg)
    return state.active.version_id if state.active else None


def committed(cfg: ApplianceConfig, version_id: str) -> bool:
    state = state_of(cfg)
    return state.trial is None and state.active is not None and \
        state.active.version_id == version_id


def assert_one_verdict_per_contiguous_frame(cfg: ApplianceConfig) -> list[str | None]:
    rows = inspections(cfg)
    seqs = [int(r[0].rsplit(":", 1)[1]) for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a frame id is missing"
    assert not [r for r in rows if r[1] == "uninspected" and "shutdown" not in str(r)]
    return [r[2] for r in rows]


def test_rollout_to_canary_then_promote_both_lines_end_on_it(world: World) -> None:
    w = world
    a1, a2 = start_app(w, "l1", "line-1"), start_app(w, "l2", "line-2")
    try:
        w.repo.assign("site-1", "line-1", "tiny", 2, 1, stage="canary")
        w.repo.publish()
        agent_of(a1).hint("hint", "0" * 32)
        wait_until(lambda: committed(a1.cfg, "tiny:2"), 60, "canary commit")
        assert active(a2.cfg) == "tiny:1"  # not assigned yet: untouched
        w.repo.assign("site-1", "line-2", "tiny", 2, 1, stage="all")
        w.repo.publish()
        agent_of(a2).hint("hint")
        wait_until(lambda: committed(a2.cfg, "tiny:2"), 60, "promotion commit")
    finally:
        a1.stop()
        a2.stop()
    for app in (a1, a2):
        versions = assert_one_verdict_per_contiguous_frame(app.cfg)
        first_v2 = versions.index("tiny:2")
        assert set(versions[:first_v2]) == {"tiny:1"} and set(versions[first_v2:]) == {"tiny:2"}
        steps = [k for k, _ in events_of(app)]
        assert "update_step" in steps and "update_refused" not in steps


@pytest.mark.parametrize("kind", ["blind", "slow"])
def test_bad_but_signed_bundle_is_refused_at_shadow(world: World, kind: str) -> None:
    w = world
    version = {"blind": 3, "slow": 4}[kind]
    app = start_app(w, "l1")
    try:
        w.repo.assign("site-1", "line-1", "tiny", version, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert active(app.cfg) == "tiny:1"
        assert app.pipeline is not None and app.pipeline.model is not None
        assert app.pipeline.model.version_id == "tiny:1"
        state = state_of(app.cfg)
        assert state.trial is None and state.last_sequence == 1
        assert f"tiny:{version}" in state.abandoned
        refused = [d for k, d in events_of(app) if k == "update_refused"]
        assert len(refused) == 1 and '"step": "shadow"' in refused[0]
        assert ("agreement" if kind == "blind" else "median frame time") in refused[0]
        agent_of(app).check("poll")  # the same assignment is not tried again
        assert len([k for k, _ in events_of(app) if k == "update_refused"]) == 1
    finally:
        app.stop()
    assert set(assert_one_verdict_per_contiguous_frame(app.cfg)) == {"tiny:1"}


def test_blind_bundle_without_shadow_is_rolled_back_in_the_health_window(world: World) -> None:
    w = world
    app = start_app(w, "l1", shadow_frames=0)
    try:
        wait_until(lambda: agent_of(app)._recent.count("tiny:1") >= 30, 20, "baseline")
        w.repo.assign("site-1", "line-1", "tiny", 3, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert active(app.cfg) == "tiny:1"
        assert app.pipeline is not None and app.pipeline.model is not None
        assert app.pipeline.model.version_id == "tiny:1"
        kinds = events_of(app)
        rollback = [d for k, d in kinds if k == "model_rollback"]
        assert len(rollback) == 1 and "defect rate" in rollback[0]
    finally:
        app.stop()
    versions = assert_one_verdict_per_contiguous_frame(app.cfg)
    assert "tiny:3" in versions and versions[-1] == "tiny:1"


def test_attacks_are_refused_with_the_active_model_untouched(world: World,
                                                              bundles: dict[str, Bundle]) -> None:
    w = world
    app = start_app(w, "l1")
    agent = agent_of(app)
    cfg = app.cfg

    def untouched() -> None:
        assert active(cfg) == "tiny:1"
        assert app.pipeline is not None and app.pipeline.model is not None
        assert app.pipeline.model.version_id == "tiny:1"

    def refusals() -> list[str]:
        return [d for k, d in events_of(app) if k == "update_refused"]

    try:
        # 1. tampered bundle: the served file is changed after it was signed.
        w.repo.assign("site-1", "line-1", "tiny", 2, 1)
        w.repo.publish()
        served = next((w.repo.targets_dir / "bundles/tiny/2").glob("*.tiny-2.tar"))
        data = bytearray(served.read_bytes())
        data[600] ^= 0xFF
        served.write_bytes(bytes(data))
        agent.check("hint")
        untouched()
        assert len(refusals()) == 1 and "download" in refusals()[-1]
        # 2. an assignment signed by a key the `deploy` role does not have.
        w.repo.assign("site-1", "line-1", "tiny", 2, 2)
        w.repo.publish(deploy_signer=CryptoSigner.generate_ed25519())
        agent.check("hint")
        untouched()
        assert len(refusals()) == 2 and "refresh" in refusals()[-1]
        # 3. a tar with a path escape, validly signed.
        evil = escape_tar(bundles["v2"].root, w.root / "evil.tar")
        w.repo.md["bundles"].signed.targets.pop("bundles/tiny/2/tiny-2.tar")
        w.repo.add_bundle(evil, "tiny", 2)
        w.repo.assign("site-1", "line-1", "tiny", 2, 5)
        w.repo.publish()
        agent.check("hint")
        untouched()
        assert len(refusals()) == 3 and "unpack" in refusals()[-1]
        assert not (cfg.updates_dir / "escape.txt").exists()
        assert not (cfg.updates_dir / "bundles" / "escape.txt").exists()
        # 4. a replayed old assignment (sequence 3 after 5 was handled).
        w.repo.md["bundles"].signed.targets.pop("bundles/tiny/2/tiny-2.tar")
        w.repo.add_bundle(w.tars["v2"], "tiny", 2)
        w.repo.assign("site-1", "line-1", "tiny", 2, 3)
        w.repo.publish()
        agent.check("hint")
        untouched()
        assert len(refusals()) == 4 and "replay" in refusals()[-1]
        # 5. a bundle copied into the bundles folder by hand, asked for by version.
        shutil.copytree(bundles["v2"].root, cfg.updates_dir / "bundles" / "tiny-2-byhand")
        result = agent.request_rollback("tiny:2", who="test", source="cli")
        assert not result.ok and "copied in by hand" in result.message
        untouched()
        assert len(refusals()) == 5
    finally:
        app.stop()
    assert set(assert_one_verdict_per_contiguous_frame(cfg)) == {"tiny:1"}


def test_unreachable_repository_backs_off_and_the_line_runs_on(world: World) -> None:
    w = world
    cfg = updates_config(w.root, "l1", w.v1.root, "http://127.0.0.1:9", w.root_file,
                         poll_interval_s=0.05)
    app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)})
    app.start()
    try:
        wait_until(lambda: agent_of(app).checks >= 4, 20, "checks backing off")
        wait_until(lambda: app.stats().verdicts["fail"] >= 50, 20, "verdicts")
        kinds = [k for k, _ in events_of(app)]
        assert "update_refused" not in kinds and "update_step" not in kinds
    finally:
        app.stop()
    assert active(cfg) == "tiny:1"


def test_rollback_command_with_no_network_runs_the_previous_bundle_within_a_second(
    world: World, tmp_path: Path
) -> None:
    import time

    import yaml

    from appliance.cli import main as appliance_main

    w = world
    app = start_app(w, "l1", shadow_frames=0, health_frames=0)
    first_v1: dict[str, float] = {}

    def watch(record: object) -> None:
        if getattr(record, "model_version", None) == "tiny:1" and "t" not in first_v1 \
                and "asked" in first_v1:
            first_v1["t"] = time.monotonic()

    assert app.pipeline is not None
    app.pipeline.add_listener(watch)
    try:
        w.repo.assign("site-1", "line-1", "tiny", 2, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert committed(app.cfg, "tiny:2")
        config = tmp_path / "l1.yaml"
        data = app.cfg.model_dump(mode="json")
        data["updates"]["repository_url"] = "http://127.0.0.1:9"  # no network from here on
        config.write_text(yaml.safe_dump(data))
        first_v1["asked"] = time.monotonic()
        assert appliance_main(["rollback", "--config", str(config), "--who", "alice"]) == 0
        wait_until(lambda: "t" in first_v1, 5, "a verdict by the previous bundle")
        assert first_v1["t"] - first_v1["asked"] < 1.0
        assert active(app.cfg) == "tiny:1"
        rollback = [d for k, d in events_of(app) if k == "model_rollback"]
        assert len(rollback) == 1 and "alice" in rollback[0] and "cli" in rollback[0]
    finally:
        app.stop()
    versions = assert_one_verdict_per_contiguous_frame(app.cfg)
    assert versions[-1] == "tiny:1"


def test_rollback_command_offline_changes_the_state_for_the_next_start(
    world: World, tmp_path: Path
) -> None:
    import yaml

    from appliance.cli import main as appliance_main

    w = world
    app = start_app(w, "l1", shadow_frames=0, health_frames=0)
    try:
        w.repo.assign("site-1", "line-1", "tiny", 2, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert committed(app.cfg, "tiny:2")
    finally:
        app.stop()
    config = tmp_path / "l1.yaml"
    config.write_text(yaml.safe_dump(app.cfg.model_dump(mode="json")))
    assert appliance_main(["rollback", "--config", str(config), "--to", "7"]) == 1
    assert appliance_main(["rollback", "--config", str(config), "--who", "bob"]) == 0
    assert active(app.cfg) == "tiny:1"
    again = start_app(w, "l1")
    try:
        assert again.pipeline is not None and again.pipeline.model is not None
        assert again.pipeline.model.version_id == "tiny:1"
        notes = [d for k, d in events_of(again) if k == "model_rollback"]
        assert len(notes) == 1 and "bob" in notes[0]
    finally:
        again.stop()


@pytest.mark.slow
def test_bundle_that_crashes_the_process_on_load_is_abandoned_after_n_starts(
    world: World, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml

    from tests.appliance.update_rig import CRASH_EXIT

    w = world
    cfg = updates_config(w.root, "l1", w.v1.root, w.url, w.root_file, max_failed_starts=1)
    config = tmp_path / "l1.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    w.repo.assign("site-1", "line-1", "tiny", 5, 1)
    w.repo.publish()
    codes = []
    for _ in range(5):  # restarted as systemd would (Restart=on-failure)
        done = subprocess.run([sys.executable, "-m", "tests.appliance.update_child",
                               str(config)], capture_output=True, timeout=90, check=False)
        codes.append(done.returncode)
        if done.returncode == 0:
            break
        assert done.returncode == CRASH_EXIT, done.stderr.decode()[-2000:]
    assert codes == [CRASH_EXIT, CRASH_EXIT, 0]
    state = state_of(cfg)
    assert state.active is not None and state.active.version_id == "tiny:1"
    assert state.trial is None and "tiny:5" in state.abandoned and state.last_sequence == 1
    kinds = [k for k, _ in event_kinds(cfg)]
    assert kinds.count("update_abandoned") == 1
    assert {v for _, _, v in inspections(cfg) if v} == {"tiny:1"}


@pytest.mark.mqtt
def test_mqtt_hint_only_wakes_the_check_and_progress_is_reported_on_model(
    world: World, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from protocol import new_msg_id, prepare
    from protocol.commands import UpdateCommand
    from tests.appliance.telemetry_helpers import Collector, telemetry_cfg
    from tests.mqtt_broker import start_broker

    w = world
    with start_broker(tmp_path) as broker:
        collector = Collector(broker.port)
        collector.connect()
        cfg = updates_config(w.root, "l1", w.v1.root, w.url, w.root_file, shadow_frames=5,
                             health_frames=5)
        cfg = cfg.model_copy(update={"telemetry": telemetry_cfg(broker.port)})
        app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)})
        app.start()
        try:
            agent = agent_of(app)
            wait_until(lambda: agent.checks >= 1, 20, "the first check")

            def hint() -> str:
                command = UpdateCommand(msg_id=new_msg_id(), site="site-1", line="line-1",
                                        sent_at=datetime.now(UTC), issued_by="mallory",
                                        target_name="tiny", target_version=9)
                out = prepare(command)
                collector.client.publish(out.topic, out.payload, 1, False)
                return command.msg_id

            checks = agent.checks
            hint()  # no new signed assignment: the hint changes nothing
            wait_until(lambda: agent.checks > checks, 20, "a check after the hint")
            assert active(cfg) == "tiny:1"
            w.repo.assign("site-1", "line-1", "tiny", 2, 1)
            w.repo.publish()
            msg_id = hint()
            wait_until(lambda: committed(cfg, "tiny:2"), 30, "the update after the hint")

            def commit_reported() -> bool:
                return any(m.update is not None and m.update.step == "commit"
                           for m in collector.kind("model"))
            wait_until(commit_reported, 20, "the commit on the model topic")
            steps = [m.update for m in collector.kind("model") if m.update is not None]
            assert {s.step for s in steps} >= {"refresh", "download", "unpack", "golden",
                                               "shadow", "swap", "health", "commit"}
            assert all(s.trigger == "hint" and s.cmd_msg_id == msg_id for s in steps)
        finally:
            app.stop()
            collector.close()


def test_rollout_from_the_clouds_release_repository(tmp_path: Path,
                                                     bundles: dict[str, Bundle]) -> None:
    """The same canary-then-promote, with the repository cloud/release writes (its
    roles, keys, layout and publishing), served over HTTP."""
    from datetime import UTC, datetime

    from protocol.assignment import Assignment, bundle_target_path, deploy_target_path
    from tests.cloud.release.tuf_helpers import new_repository, serve_directory

    repo, _keys = new_repository(tmp_path / "cloud")
    tar = pack_bundle(bundles["v2"].root, tmp_path / "v2.tar")
    info = repo.add_target("bundles", bundle_target_path("tiny", 2), tar)
    root_file = tmp_path / "root.json"
    root_file.write_bytes(repo.trusted_root())

    def assign(line: str, stage: str) -> None:
        a = Assignment.model_validate({
            "schema": "lineguard.assignment/1", "site": "site-1", "line": line,
            "sequence": 1, "model": "tiny", "version": 2,
            "bundle_target": bundle_target_path("tiny", 2),
            "bundle_sha256": info.hashes["sha256"], "bundle_length": info.length,
            "stage": stage, "issued_at": datetime.now(UTC), "issued_by": "test"})
        repo.add_target("deploy", deploy_target_path("site-1", line),
                        a.model_dump_json(by_alias=True).encode(),
                        custom=a.model_dump(mode="json", by_alias=True))

    with serve_directory(repo.root_dir) as url:
        w = World(tmp_path, None, url, root_file, bundles["v1"], {})  # type: ignore[arg-type]
        a1, a2 = start_app(w, "l1", "line-1"), start_app(w, "l2", "line-2")
        try:
            assign("line-1", "canary")
            agent_of(a1).check("hint")
            assert committed(a1.cfg, "tiny:2") and active(a2.cfg) == "tiny:1"
            assign("line-2", "all")
            agent_of(a2).check("hint")
            assert committed(a2.cfg, "tiny:2")
        finally:
            a1.stop()
            a2.stop()
    for app in (a1, a2):
        versions = assert_one_verdict_per_contiguous_frame(app.cfg)
        assert versions[0] == "tiny:1" and versions[-1] == "tiny:2"


def test_panel_rollback_control_goes_back_and_names_the_engineer(world: World) -> None:
    from appliance.updater.errors import UpdateRejected
    from appliance.updater.panel_control import AgentRollback

    w = world
    app = start_app(w, "l1", shadow_frames=0, health_frames=0)
    control = AgentRollback(lambda: app.updates)
    try:
        assert control.previous() is None
        with pytest.raises(UpdateRejected, match="no previous bundle"):
            control.rollback("eve")
        w.repo.assign("site-1", "line-1", "tiny", 2, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert control.previous() == "tiny:1"
        assert control.rollback("eve") == "tiny:1"
        assert app.pipeline is not None and app.pipeline.model is not None
        assert app.pipeline.model.version_id == "tiny:1"
        rollback = [d for k, d in events_of(app) if k == "model_rollback"]
        assert len(rollback) == 1 and '"who": "eve"' in rollback[0] and "panel" in rollback[0]
    finally:
        app.stop()
    assert AgentRollback(lambda: None).previous() is None


def test_signed_rollback_assignment_goes_back_without_a_shadow_run(world: World) -> None:
    w = world
    app = start_app(w, "l1", health_frames=5)
    try:
        w.repo.assign("site-1", "line-1", "tiny", 2, 1)
        w.repo.publish()
        agent_of(app).check("hint")
        assert committed(app.cfg, "tiny:2")
        v1_tar = pack_bundle(w.v1.root, w.root / "tars" / "v1.tar")
        w.repo.add_bundle(v1_tar, "tiny", 1)
        w.repo.assign("site-1", "line-1", "tiny", 1, 2, stage="rollback")
        w.repo.publish()
        agent_of(app).check("rollback")
        assert committed(app.cfg, "tiny:1")
        events = events_of(app)
        shadow = [d for k, d in events if k == "update_step" and '"step": "shadow"' in d]
        assert "a signed rollback" in shadow[-1]
        rollback = [d for k, d in events if k == "model_rollback"]
        assert len(rollback) == 1 and '"via": "assignment"' in rollback[0]
    finally:
        app.stop()
    versions = assert_one_verdict_per_contiguous_frame(app.cfg)
    assert versions[0] == "tiny:1" and "tiny:2" in versions and versions[-1] == "tiny:1"


@pytest.mark.mqtt
def test_the_retained_model_report_keeps_how_a_refused_update_ended(
    world: World, tmp_path: Path
) -> None:
    """What the cloud's rollout controller reads: the canary's latest `model` report says
    the activation of the bad bundle failed, even after later model reports."""
    from tests.appliance.telemetry_helpers import Collector, telemetry_cfg
    from tests.mqtt_broker import start_broker

    w = world
    with start_broker(tmp_path) as broker:
        fleet = Collector(broker.port, client_id="fleet")  # the cloud's collector
        fleet.connect()
        cfg = updates_config(w.root, "l1", w.v1.root, w.url, w.root_file, shadow_frames=0)
        cfg = cfg.model_copy(update={"telemetry": telemetry_cfg(broker.port)})
        app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)})
        app.start()
        try:
            wait_until(lambda: agent_of(app)._recent.count("tiny:1") >= 30, 20, "baseline")
            w.repo.assign("site-1", "line-1", "tiny", 3, 1)
            w.repo.publish()
            agent_of(app).check("hint")
            assert active(cfg) == "tiny:1"
        finally:
            app.stop()
            fleet.close()
        collector = Collector(broker.port, client_id="late")  # the retained copy
        collector.connect()
        try:
            wait_until(lambda: bool(collector.kind("model")), 10, "the retained model report")
            last = collector.kind("model")[-1]
            assert last.current is not None and last.current.version == 1
            assert last.update is not None and last.update.step == "rollback"
            assert last.update.target is not None and last.update.target.version == 3
        finally:
            collector.close()


def test_bundle_that_hangs_while_loading_is_refused_and_the_line_runs_on(
    world: World, tmp_path: Path
) -> None:
    from tests.appliance.update_rig import HANG_RELEASE

    w = world
    hang = make_bundle(tmp_path / "b", 6, kind="hang")
    w.repo.add_bundle(pack_bundle(hang.root, tmp_path / "hang.tar"), "tiny", 6)
    w.repo.assign("site-1", "line-1", "tiny", 6, 1)
    w.repo.publish()
    HANG_RELEASE.clear()
    app = start_app(w, "l1", load_timeout_s=1.0)
    try:
        wait_until(lambda: agent_of(app).checks >= 1, 20, "the check")
        refused = [d for k, d in events_of(app) if k == "update_refused"]
        assert len(refused) == 1 and "did not load in 1 s" in refused[0]
        assert active(app.cfg) == "tiny:1" and "tiny:6" in state_of(app.cfg).abandoned
        assert app.pipeline is not None and app.pipeline.model is not None
        assert app.pipeline.model.version_id == "tiny:1"
        fails = app.stats().verdicts["fail"]
        wait_until(lambda: app.stats().verdicts["fail"] > fails + 10, 10, "parts judged")
    finally:
        HANG_RELEASE.set()
        app.stop()
    assert set(assert_one_verdict_per_contiguous_frame(app.cfg)) == {"tiny:1"}
