"""lineguard models package."""
