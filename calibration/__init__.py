"""lineguard calibration package."""
