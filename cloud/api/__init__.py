"""The fleet API: `create_app(store, token)`; `lineguard cloud serve` runs it with uvicorn."""

from cloud.api.app import MetricsSeries, create_app

__all__ = ["MetricsSeries", "create_app"]
