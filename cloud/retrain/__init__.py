"""Retraining: fine-tune a registered model on a dataset, gate the candidate against
its parent, and the triggers that ask for it (CLI, schedule, `request_retrain` for the
drift detector). See docs/retraining.md."""
