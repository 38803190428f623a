"""fleet: each detection's size on the part plane in millimetres (`events/defect/2`).

`defects.width_mm` and `defects.height_mm`, NULL where the line's station has no
calibrated scale and for detections stored before this revision or sent as
`events/defect/1`. Nullable columns: added in place on SQLite and PostgreSQL alike.

Revision ID: fleet_0002
Revises: fleet_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fleet_0002"
down_revision = "fleet_0001"
branch_labels = None
depends_on = None

DOUBLE = sa.Float(precision=53).with_variant(sa.Float(), "sqlite")


def upgrade() -> None:
    op.add_column("defects", sa.Column("width_mm", DOUBLE))
    op.add_column("defects", sa.Column("height_mm", DOUBLE))
