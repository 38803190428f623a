"""Tables of the drift component (Alembic branch `drift`). No foreign keys to other
components: lines and models are named by natural keys (site, line, model name and
version)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per drift window received (de-duplicated on msg_id, and per line and model on
# the frame range).
drift_windows = Table(
    "drift_windows", metadata,
    Column("msg_id", String(32), primary_key=True),
    Column("site", String(63), nullable=False),
    Column("line", String(63), nullable=False),
    Column("station", String(64), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("first_frame_id", BigInteger, nullable=False),
    Column("last_frame_id", BigInteger, nullable=False),
    Column("frame_count", Integer, nullable=False),
    Column("window_start_ms", BigInteger, nullable=False),
    Column("window_end_ms", BigInteger, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("image_json", Text, nullable=True),
    Column("output_json", Text, nullable=True),
    Column("statistic", Float, nullable=True),
)
Index("drift_windows_key", drift_windows.c.site, drift_windows.c.line, drift_windows.c.station,
      drift_windows.c.model_name, drift_windows.c.model_version, drift_windows.c.last_frame_id)

# The detector of one line, station and model: its baseline and its state (JSON).
drift_detectors = Table(
    "drift_detectors", metadata,
    Column("site", String(63), primary_key=True),
    Column("line", String(63), primary_key=True),
    Column("station", String(64), primary_key=True),
    Column("model_name", String(64), primary_key=True),
    Column("model_version", BigInteger, primary_key=True),
    Column("reference_source", String(16), nullable=False),
    Column("reference_frames", Integer, nullable=False),
    Column("baseline_json", Text, nullable=True),
    Column("state_json", Text, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

drift_alerts = Table(
    "drift_alerts", metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("site", String(63), nullable=False),
    Column("line", String(63), nullable=False),
    Column("station", String(64), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("channels_json", Text, nullable=False),
    Column("onset_frame_id", BigInteger, nullable=False),
    Column("onset_at_ms", BigInteger, nullable=False),
    Column("raised_at_ms", BigInteger, nullable=False),
    Column("statistic", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("mmd_p_value", Float, nullable=False),
    Column("published", Boolean, nullable=False),
    Column("retrain_requested", Boolean, nullable=False),
    Column("acknowledged_at_ms", BigInteger, nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
)
Index("drift_alerts_line", drift_alerts.c.site, drift_alerts.c.line, drift_alerts.c.raised_at_ms)
