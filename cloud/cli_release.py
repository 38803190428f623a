"""`lineguard cloud release|rollout|rollback|rollout-controller`: signed releases and
rollouts from the command line (see docs/releases.md). Every command but `release init`
reads the cloud config (`database:`, `registry:`, `release:`, and the fleet store for
rollouts)."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.registry import ModelRef
from protocol.cliargs import HelpFormatter, comma_list, positive_int

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.release.open import ReleaseSide
    from cloud.rollout.service import RolloutService

RELEASE_COMMANDS = frozenset({"release", "rollout", "rollback", "rollout-controller"})
_Sub = argparse._SubParsersAction


def add_release_commands(sub: _Sub[argparse.ArgumentParser]) -> None:
    """Register `release`, `rollout`, `rollback` and `rollout-controller`."""

    def parser(parent: _Sub[argparse.ArgumentParser], name: str, text: str,
               config: bool = True) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        if config:
            p.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
        return p

    rel = parser(sub, "release", "the signed TUF repository: init, status, refresh, "
                 "rotate-root, rotate-key, publish, assign", config=False)
    rsub = rel.add_subparsers(dest="release_cmd", required=True)
    init = parser(rsub, "init", "create the keys (ed25519) and the first version of every "
                  "role in DIR", config=False)
    init.add_argument("dir", type=Path, help="repository directory to create (metadata/, "
                      "targets/)")
    init.add_argument("--keys-dir", type=Path, help="where the private keys go "
                      "(default: DIR-keys beside DIR; never inside the served directory)")
    init.add_argument("--config", type=Path, help="cloud config whose release.expiry to use")
    parser(rsub, "status", "every role's version, expiry and keys")
    ref = parser(rsub, "refresh", "re-sign timestamp and snapshot (and bundles, deploy) "
                 "before they expire (run from a systemd timer)")
    ref.add_argument("--force", action="store_true", help="re-sign even if not due")
    rot = parser(rsub, "rotate-root", "publish a new root that replaces (revokes) keys")
    rot.add_argument("--revoke", action="append", required=True, metavar="KEYID",
                     help="key id (or a unique prefix of 8+ hex digits); repeatable")
    rot.add_argument("--keys-dir", type=Path, required=True, help="where the new keys go")
    rk = parser(rsub, "rotate-key", "replace the key of a delegated role (bundles, deploy); "
                "needs the targets key")
    rk.add_argument("role", choices=["bundles", "deploy"], help="the delegated role")
    rk.add_argument("--keys-dir", type=Path, required=True, help="where the new key goes")
    pub = parser(rsub, "publish", "sign an approved registry model as a bundle target")
    pub.add_argument("model", type=ModelRef.parse, metavar="MODEL@VERSION",
                     help="the approved registry model to publish")
    pub.add_argument("--by", help="who publishes (default: the login name)")
    asg = parser(rsub, "assign", "sign one line's assignment to a released bundle")
    asg.add_argument("line", metavar="SITE/LINE", help="the line to assign")
    asg.add_argument("model", type=ModelRef.parse, metavar="MODEL@VERSION",
                     help="the released model it runs")
    asg.add_argument("--reason", help="why (kept with the assignment)")
    asg.add_argument("--by", help="who assigns (default: the login name)")

    ro = parser(sub, "rollout", "canary rollouts: start, status, halt", config=False)
    rosub = ro.add_subparsers(dest="rollout_cmd", required=True)
    st = parser(rosub, "start", "sign canary assignments for a released model; the "
                "controller promotes it or halts")
    st.add_argument("model", type=ModelRef.parse, metavar="MODEL@VERSION",
                    help="the released model to roll out")
    st.add_argument("--canary", type=comma_list, required=True, metavar="SITE/LINE[,NAME...]",
                    help="canary lines, comma-separated SITE/LINE names")
    st.add_argument("--health-window-s", type=positive_int,
                    help="health window per stage (default: release.rollout.bounds)")
    st.add_argument("--waves", type=positive_int, default=1,
                    help="promote to the other lines in this many waves")
    st.add_argument("--by", help="who starts it (default: the login name)")
    ss = parser(rosub, "status", "rollouts with their steps (newest first)")
    ss.add_argument("rollout_id", nargs="?", help="one rollout (default: the last 10)")
    ss.add_argument("--json", action="store_true", help="JSON output")
    ha = parser(rosub, "halt", "halt an active rollout and send its lines back")
    ha.add_argument("rollout_id", help="the rollout to halt (as `rollout status` lists it)")
    ha.add_argument("--reason", required=True, help="why (kept with the rollout)")
    ha.add_argument("--by", help="who halts (default: the login name)")

    rb = parser(sub, "rollback", "sign a line's assignment back to an earlier version "
                "(a new assignment, never a replay)")
    rb.add_argument("line", metavar="SITE/LINE", help="the line to roll back")
    rb.add_argument("--to", type=positive_int, metavar="VERSION",
                    help="version to go back to (default: the previous one assigned)")
    rb.add_argument("--reason", help="why (kept with the assignment)")
    rb.add_argument("--by", help="who rolls back (default: the login name)")

    parser(sub, "rollout-controller", "watch active rollouts: promote healthy stages, halt "
           "and roll back unhealthy ones (a service)")


def _by(args: argparse.Namespace) -> str:
    return str(getattr(args, "by", None) or getpass.getuser())


def _load(path: Path) -> CloudConfig:
    from cloud.config import load_config

    return load_config(path)


def _init(args: argparse.Namespace) -> int:
    from cloud.release.config import RoleExpiry
    from cloud.release.initialise import init_repository

    expiry = _load(args.config).release.expiry if args.config else RoleExpiry()
    repo_dir: Path = args.dir
    keys_dir: Path = args.keys_dir or repo_dir.with_name(repo_dir.name + "-keys")
    if keys_dir.resolve().is_relative_to(repo_dir.resolve()):
        print("error: the keys directory must not be inside the served repository",
              file=sys.stderr)
        return 2
    result = init_repository(repo_dir, keys_dir, expiry)
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    print(f"repository {repo_dir.resolve()}: version 1 of every role; provision lines with "
          f"{(repo_dir / 'metadata' / '1.root.json').resolve()}")
    print("add to the cloud config:\n"
          f"release:\n  repository_dir: {repo_dir.resolve()}\n"
          f"  signers_file: {result.signers_file.resolve()}")
    return 0


def _release(cfg: CloudConfig, args: argparse.Namespace, side: ReleaseSide) -> int:
    from cloud.registry import ModelRegistry
    from cloud.release.publish import assign_line, publish_release
    from cloud.release.rotation import rotate_delegated_key, rotate_root
    from cloud.rollout.service import split_line

    cmd = args.release_cmd
    if cmd == "status":
        for s in side.repo.status():
            print(f"{s.role:10} version {s.version:<6} expires {s.expires.isoformat()}  "
                  f"threshold {s.threshold} of {', '.join(k[:16] for k in s.keyids)}")
    elif cmd == "refresh":
        done = side.repo.refresh(force=args.force)
        print(f"re-signed: {', '.join(done)}" if done else "nothing due")
    elif cmd == "rotate-root":
        result = rotate_root(side.repo, args.revoke, args.keys_dir, cfg.release.signers_file)
        print(f"root version {result.version}: revoked "
              f"{', '.join(k[:16] for k in result.revoked)}")
        for k in result.new_keys:
            print(f"new {k.role} key {k.key.keyid}: {k.path}")
        if cfg.release.signers_file is None:
            print("no release.signers_file: add the new keys to release.signers",
                  file=sys.stderr)
    elif cmd == "rotate-key":
        result = rotate_delegated_key(side.repo, args.role, args.keys_dir,
                                      cfg.release.signers_file)
        revoked = ", ".join(k[:16] for k in result.revoked)
        print(f"targets version {result.version}: {args.role} key "
              f"{result.new_keys[0].key.keyid} replaces {revoked}")
    elif cmd == "publish":
        registry = ModelRegistry(side.engine, cfg.registry.root)
        r = publish_release(side.repo, registry, side.store, args.model.name,
                            args.model.version, by=_by(args))
        print(f"published {r.model}@{r.version} as {r.target_path} ({r.length} bytes, "
              f"sha256 {r.sha256})")
    elif cmd == "assign":
        site, line = split_line(args.line)
        a = assign_line(side.repo, side.store, site, line, args.model.name, args.model.version,
                        stage="manual", by=_by(args), reason=args.reason)
        print(f"{site}/{line}: {a.model}@{a.version} (sequence {a.sequence})")
    return 0


@contextmanager
def _service(cfg: CloudConfig, side: ReleaseSide, *,
             controller: bool) -> Iterator[RolloutService]:
    from cloud.fleet import FleetStore
    from cloud.rollout.hints import MqttHinter
    from cloud.rollout.service import RolloutService

    # The fleet store is the rollout's telemetry (the one place that opens it here).
    fleet = FleetStore(cfg.database, cfg.store)
    broker = cfg.release.rollout.broker
    suffix = "" if controller else f"-cli-{os.getpid()}"
    hinter = (MqttHinter(broker, by="lineguard-cloud", client_id_suffix=suffix)
              if broker is not None else None)
    try:
        yield RolloutService(side.repo, side.store, fleet, hinter, cfg.release.rollout.bounds)
    finally:
        if hinter is not None:
            hinter.close()
        fleet.close()


def _rollout(cfg: CloudConfig, args: argparse.Namespace, side: ReleaseSide) -> int:
    with _service(cfg, side, controller=args.cmd == "rollout-controller") as service:
        return _rollout_with(cfg, args, side, service)


def _rollout_with(cfg: CloudConfig, args: argparse.Namespace, side: ReleaseSide,
                  service: RolloutService) -> int:
    from cloud.rollout.service import split_line

    cmd = args.cmd if args.cmd != "rollout" else args.rollout_cmd
    if cmd == "start":
        r = service.start(args.model.name, args.model.version, args.canary, by=_by(args),
                          waves=args.waves, health_window_s=args.health_window_s)
        print(f"rollout {r.rollout_id}: {r.model}@{r.version}; stages "
              + " | ".join(", ".join(s) for s in r.stages))
    elif cmd == "status":
        if args.rollout_id:
            one = side.store.rollout(args.rollout_id)
            if one is None:
                print(f"error: no rollout {args.rollout_id}", file=sys.stderr)
                return 2
            rollouts = [one]
        else:
            rollouts = side.store.rollouts(limit=10)
        for r in rollouts:
            if args.json:
                print(r.model_dump_json())
                continue
            print(f"{r.rollout_id} {r.model}@{r.version} {r.state} stage {r.stage_index + 1}"
                  f"/{len(r.stages)}" + (f": {r.reason}" if r.reason else ""))
            for step in r.steps:
                where = f" {step.site}/{step.line}" if step.site else ""
                print(f"  {step.at.isoformat()} {step.kind}{where}: {step.detail}")
    elif cmd == "halt":
        r = service.halt(args.rollout_id, args.reason, by=_by(args))
        print(f"rollout {r.rollout_id} halted")
    elif cmd == "rollback":
        site, line = split_line(args.line)
        a = service.rollback(site, line, by=_by(args), to_version=args.to, reason=args.reason)
        print(f"{site}/{line}: back to {a.model}@{a.version} (sequence {a.sequence})")
    elif cmd == "rollout-controller":
        from cloud.rollout.service import run_controller

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        run_controller(service, stop, cfg.release.rollout.interval_s)
    return 0


def run_release(args: argparse.Namespace) -> int:
    """Run `release ...`, `rollout ...`, `rollback` or `rollout-controller`."""
    from cloud.errors import CloudError
    from cloud.release.open import open_release

    try:
        if args.cmd == "release" and args.release_cmd == "init":
            return _init(args)
        cfg = _load(args.config)
        side = open_release(cfg.database, cfg.release)
        try:
            if args.cmd == "release":
                return _release(cfg, args, side)
            return _rollout(cfg, args, side)
        finally:
            side.close()
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
