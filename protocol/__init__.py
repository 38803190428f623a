"""lineguard protocol package."""
