"""The HTTP fetcher the TUF client downloads through (python-tuf's `FetcherInterface`):
urllib3 with a connect and gap timeout, no retries of its own (the agent backs off),
every transport failure translated into tuf's `DownloadError` family, and a `close`
that drops its connections (the agent closes it when it stops)."""

from __future__ import annotations

from collections.abc import Iterator

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK_BYTES = 256 * 1024


class HttpFetcher(FetcherInterface):
    """GET over HTTP(S); `timeout_s` bounds the connect and every gap between bytes."""

    def __init__(self, timeout_s: float = 10.0, user_agent: str = "lineguard") -> None:
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=True),
            headers={"User-Agent": user_agent})

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError(f"{url}: {e.reason}") from e
            raise exceptions.DownloadError(f"{url}: {e.reason}") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e
        if response.status >= 400:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}",
                                               response.status)
        return self._chunks(url, response)

    @staticmethod
    def _chunks(url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(CHUNK_BYTES)
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"{url}: {e}") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e
        finally:
            response.release_conn()

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.clear()
