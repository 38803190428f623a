"""Schema of the appliance database: numbered migrations (see migrations.py)."""
