"""Drift signals and a model's drift reference (shared by appliance, cloud and bench)."""
