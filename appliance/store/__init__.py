"""The appliance's local store: SQLite (WAL, one writer thread, batched transactions,
numbered migrations) for verdicts, defects and events, plus a byte-quota'd JPEG keeper.

Public API: `Store`, `StoreConfig`, `ImageKeepConfig`, `StoreStats`, and the query row
types in `appliance.store.queries`.
"""

from appliance.store.config import ImageKeepConfig, StoreConfig
from appliance.store.store import Store, StoreStats

__all__ = ["ImageKeepConfig", "Store", "StoreConfig", "StoreStats"]
