"""The engineer's rollback control on the panel, backed by the update agent.

It fits the panel's `RollbackControl` seam (appliance/panel/ports.py on the panel
branch: `previous() -> str | None`, `rollback(by) -> str`, raising `RollbackUnavailable`)
without importing the panel: the exception to raise is passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.updater.errors import UpdateRejected, UpdateStateError
from appliance.updater.service import Updates


class AgentRollback:
    """`previous()` names the bundle a rollback would activate; `rollback(by)` does it
    through `UpdateAgent.request_rollback` (an event naming `by`, via `panel`) and
    returns the version id now active. `updates()` gives the running `Updates` (None
    while the appliance has none); `unavailable(message)` builds the exception raised
    when there is nothing to roll back to or the agent refuses."""

    def __init__(self, updates: Callable[[], Updates | None],
                 unavailable: Callable[[str], Exception] = UpdateRejected) -> None:
        self._updates = updates
        self._unavailable = unavailable

    def previous(self) -> str | None:
        updates = self._updates()
        if updates is None:
            return None
        try:
            state = updates.state_file.load()
        except UpdateStateError:
            return None
        return state.previous.version_id if state.previous is not None else None

    def rollback(self, by: str) -> str:
        updates = self._updates()
        agent = updates.agent if updates is not None else None
        if agent is None:
            raise self._unavailable("model updates are not configured on this appliance")
        result = agent.request_rollback(None, who=by, source="panel")
        if not result.ok or result.active is None:
            raise self._unavailable(result.message)
        return result.active
