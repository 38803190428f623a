"""lineguard appliance package."""
