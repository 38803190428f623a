"""lineguard cloud package."""
