"""A line's signed model assignment: the body of the TUF target `deploy/<site>/<line>.json`.

The cloud's `deploy` role signs one such file per line (cloud/release); the line's
update agent (appliance/updater) reads its own after a verified TUF refresh and acts on
nothing else. The same fields sit in the target's `custom` metadata, where canonical
JSON allows no floats: every field here is a string or an integer.

Replays are stopped by TUF (metadata versions only move forward); `sequence` is the
cloud's own counter per line, so a rollback is a new assignment (a higher sequence)
pointing at the old bundle, never a replay of an old file.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, Field

from protocol.fields import (
    MAX_SAFE_INT,
    WIRE_CONFIG,
    LineId,
    ModelVersion,
    Name,
    ShortText,
    SiteId,
    Text,
    UtcTimestamp,
)

ASSIGNMENT_SCHEMA: Final = "lineguard.assignment/1"
# Delegation path patterns (TUF's `*` does not cross `/`).
BUNDLE_TARGET_PATTERN: Final = "bundles/*/*/*"
DEPLOY_TARGET_PATTERN: Final = "deploy/*/*.json"

AssignmentStage = Literal["canary", "wave", "all", "rollback", "manual"]


def bundle_target_path(model: str, version: int) -> str:
    """The TUF target path of a bundle tar: `bundles/<model>/<version>/<model>-<version>.tar`."""
    return f"bundles/{model}/{version}/{model}-{version}.tar"


def deploy_target_path(site: str, line: str) -> str:
    """The TUF target path of a line's assignment: `deploy/<site>/<line>.json`."""
    return f"deploy/{site}/{line}.json"


class Assignment(BaseModel):
    """Which bundle one line must run."""

    model_config = WIRE_CONFIG

    schema_id: Literal["lineguard.assignment/1"] = Field(ASSIGNMENT_SCHEMA, alias="schema")
    site: SiteId
    line: LineId
    # Per line, strictly increasing with every assignment the cloud signs.
    sequence: int = Field(ge=1, le=MAX_SAFE_INT)
    model: Name
    version: ModelVersion
    # `bundle_target_path(model, version)`; must also be listed by the `bundles` role.
    bundle_target: str = Field(min_length=1, max_length=512)
    # hex sha256 and byte length of the bundle tar, as `bundles` signed them.
    bundle_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bundle_length: int = Field(ge=1, le=MAX_SAFE_INT)
    rollout_id: Name | None = None
    stage: AssignmentStage
    issued_at: UtcTimestamp
    issued_by: ShortText
    reason: Text | None = None
