"""The cloud service's exception tree (collector, fleet store, fleet API).

Adapters translate library errors into these (`raise StoreUnavailable(...) from e`);
only the web layer turns them into HTTP responses, only `cli.py` into exit codes.
"""

from __future__ import annotations


class CloudError(Exception):
    """Root of every error the cloud's collector, fleet store and API raise on purpose."""


class ConfigError(CloudError):
    """The configuration is invalid; the message names the file, the key path and why."""


class FleetStoreError(CloudError):
    """The fleet store could not be opened, migrated, written or read."""


class StoreUnavailable(FleetStoreError):
    """A transient failure (database locked, disk full, I/O error): retrying may help."""


class StoreRejected(FleetStoreError):
    """The database refused the data itself (a constraint); retrying the same rows won't help."""


class CollectorError(CloudError):
    """The collector could not start (bad broker settings, TLS files, subscription refused)."""
