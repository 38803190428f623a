"""Canary rollouts and rollbacks over signed assignments (cloud/release). See
docs/releases.md."""
