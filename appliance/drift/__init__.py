"""Drift signals on the line: per-frame signals aggregated into `drift` windows, and
the cloud's `cmd/alert` shown as an alarm."""
