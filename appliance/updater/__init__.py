"""Verified model updates: TUF assignment, staged activation, crash-safe state, rollback
(see docs/updates.md). Kept import-light: `appliance.config` imports the config model."""
