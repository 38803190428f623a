"""`lineguard appliance rollback [--config FILE] [--to VERSION] [--who NAME]`: go back to
a cached verified bundle, with no network.

With the appliance running (it holds the agent lock), the request goes to its update
agent through the control folder and the swap happens between two batches (the previous
bundle stays loaded as a standby: milliseconds); the command waits for the answer. With
no appliance running, the state file is changed directly (holding the agent lock) and
the next start runs the bundle; the event is recorded at that start.
Exit status: 0 done, 1 refused or no answer, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.updater import control
from appliance.updater.errors import UpdateRejected, UpdateStateError
from appliance.updater.state import Note, StateFile, now_utc, roll_back
from appliance.updater.verified import BundleCache
from protocol.cliargs import add_logging_arguments


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("rollback", formatter_class=formatter,
                       help="go back to the previous (or a given) cached verified bundle")
    p.add_argument("--config", type=Path, help="YAML file (default: built-in defaults)")
    p.add_argument("--to", help="NAME:VERSION or VERSION of a cached verified bundle "
                                "(default: the previous one)")
    p.add_argument("--who", default=None, help="who asks, for the record (default: $USER)")
    p.add_argument("--timeout-s", type=float, default=10.0,
                   help="how long to wait for a running appliance to answer")
    add_logging_arguments(p, default_level="warning")


def rollback(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.updates is None:
        raise ConfigError("rollback needs an `updates:` section (the verified bundle cache)")
    cache = cfg.updates_dir
    who = args.who or getpass.getuser()
    lock = control.AgentLock(cache)
    if lock.acquire():
        try:
            return _offline(cache, args.to, who, cfg.model.max_unpacked_bytes)
        finally:
            lock.release()
    request = control.new_request(args.to, who)
    control.write_request(cache, request)
    result = control.wait_result(cache, request.request_id, args.timeout_s)
    if result is None:
        print(f"no answer from the running appliance in {args.timeout_s:.0f} s",
              file=sys.stderr)
        return 1
    print(("rolled back: " if result.ok else "refused: ") + result.message,
          file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _offline(cache: Path, to: str | None, who: str, max_unpacked_bytes: int) -> int:
    state_file = StateFile(cache)
    state = state_file.load()
    target = state.previous
    if to is not None:
        known = [r for r in (state.previous, state.active) if r is not None and
                 to in (r.version_id, r.version_id.rsplit(":", 1)[1])]
        target = known[0] if known else BundleCache(
            cache, max_unpacked_bytes=max_unpacked_bytes).find(to)
    if target is None:
        print("refused: " + ("no previous bundle" if to is None else
                             f"no verified bundle {to} on this machine"), file=sys.stderr)
        return 1
    try:
        BundleCache(cache, max_unpacked_bytes=max_unpacked_bytes).open(target)
        new = roll_back(state, target, abandon=False)
    except (UpdateStateError, UpdateRejected) as e:  # the cached copy no longer verifies
        print(f"refused: {e}", file=sys.stderr)
        return 1
    note = Note(at=now_utc(), kind="model_rollback", who=who,
                message=f"rolled back offline to {target.version_id} (asked by {who} via cli)")
    state_file.save(new.model_copy(update={"notes": (*new.notes, note)}))
    print(f"rolled back (appliance not running): {target.version_id} runs at the next start")
    return 0
