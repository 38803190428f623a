"""The line's view of the cloud's TUF repository: one verified refresh per check, the
line's own signed assignment, and its bundle tar (python-tuf's ngclient does all
signature, version, expiry, length and hash checks; this module adds none of its own
crypto and only translates errors).

A new `tuf.ngclient.Updater` is made for every check (ngclient refreshes once per
instance), bootstrapped from the trusted root file; its metadata directory persists in
the cache, so versions only move forward across checks and restarts (a replayed old
timestamp, snapshot or targets file is refused by ngclient).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError
from tuf.api.exceptions import DownloadError, DownloadLengthMismatchError, RepositoryError
from tuf.api.metadata import TargetFile
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from appliance.updater.errors import RepositoryUnavailable, UpdateRejected
from appliance.updater.fetcher import HttpFetcher
from protocol.assignment import Assignment, deploy_target_path

logger = logging.getLogger(__name__)

MAX_ASSIGNMENT_BYTES = 64 * 1024


class RepositorySession:
    """One verified refresh of the repository (`Repository.session()`)."""

    def __init__(self, updater: Updater, downloads: Path, max_bundle_bytes: int) -> None:
        self._updater = updater
        self._downloads = downloads
        self._max_bundle_bytes = max_bundle_bytes

    def _target(self, path: str) -> TargetFile | None:
        try:
            return self._updater.get_targetinfo(path)
        except RepositoryError as e:
            raise UpdateRejected(f"repository metadata refused: {e}") from e
        except (DownloadError, OSError) as e:
            raise RepositoryUnavailable(f"repository unreachable: {e}") from e

    def _download(self, info: TargetFile) -> Path:
        """Download a target to a temporary name, verified, then rename it."""
        self._downloads.mkdir(parents=True, exist_ok=True)
        final = self._downloads / info.path.replace("/", "_")
        part = final.with_name(final.name + ".part")
        try:
            self._updater.download_target(info, filepath=str(part))
        except (RepositoryError, DownloadLengthMismatchError) as e:
            part.unlink(missing_ok=True)
            raise UpdateRejected(f"{info.path}: download refused: {e}") from e
        except (DownloadError, OSError) as e:
            part.unlink(missing_ok=True)
            raise RepositoryUnavailable(f"{info.path}: download failed: {e}") from e
        os.replace(part, final)
        return final

    def assignment(self, site: str, line: str) -> Assignment | None:
        """This line's signed assignment (None: the repository assigns it nothing).
        Raises UpdateRejected (bad signature, metadata, body), RepositoryUnavailable."""
        info = self._target(deploy_target_path(site, line))
        if info is None:
            return None
        if info.length > MAX_ASSIGNMENT_BYTES:
            raise UpdateRejected(f"{info.path}: {info.length} bytes is no assignment")
        path = self._download(info)
        try:
            assignment = Assignment.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise UpdateRejected(f"{info.path}: invalid assignment: {e}") from e
        finally:
            path.unlink(missing_ok=True)
        if (assignment.site, assignment.line) != (site, line):
            raise UpdateRejected(f"{info.path} names {assignment.site}/{assignment.line}, "
                                 f"not this line {site}/{line}")
        return assignment

    def bundle(self, assignment: Assignment) -> Path:
        """Download the assigned bundle tar (bounded by its signed length, verified) and
        return its path. Raises UpdateRejected (not signed as assigned, too large,
        tampered), RepositoryUnavailable."""
        info = self._target(assignment.bundle_target)
        if info is None:
            raise UpdateRejected(f"{assignment.bundle_target}: not a signed target")
        sha = info.hashes.get("sha256")
        if sha != assignment.bundle_sha256 or info.length != assignment.bundle_length:
            raise UpdateRejected(
                f"{assignment.bundle_target}: signed as {info.length} bytes sha256 "
                f"{(sha or '?')[:12]}..., assignment says {assignment.bundle_length} bytes "
                f"{assignment.bundle_sha256[:12]}...")
        if info.length > self._max_bundle_bytes:
            raise UpdateRejected(f"{assignment.bundle_target}: {info.length} bytes is over "
                                 f"updates.max_bundle_bytes ({self._max_bundle_bytes})")
        return self._download(info)


class Repository:
    """The repository at `url` as this line sees it; `trusted_root` is the root metadata
    shipped with the appliance, `cache_dir` keeps metadata and downloads."""

    def __init__(self, url: str, trusted_root: Path, cache_dir: Path, *,
                 max_bundle_bytes: int, fetcher: FetcherInterface | None = None,
                 timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._trusted_root = Path(trusted_root)
        self._metadata_dir = Path(cache_dir) / "metadata"
        self._downloads = Path(cache_dir) / "downloads"
        self._max_bundle_bytes = max_bundle_bytes
        self._own_fetcher: HttpFetcher | None = None
        if fetcher is None:
            self._own_fetcher = fetcher = HttpFetcher(timeout_s)
        self._fetcher = fetcher

    def close(self) -> None:
        """Drop the fetcher's connections (the one made here)."""
        if self._own_fetcher is not None:
            self._own_fetcher.close()

    def session(self) -> RepositorySession:
        """A new ngclient Updater, refreshed. Raises UpdateRejected (metadata refused:
        bad signature, expired, rolled back), RepositoryUnavailable, UpdateStateError
        (the trusted root file)."""
        try:
            root = self._trusted_root.read_bytes()
        except OSError as e:
            raise UpdateRejected(f"trusted root {self._trusted_root}: {e}") from e
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            updater = Updater(str(self._metadata_dir), f"{self.url}/metadata/",
                              target_base_url=f"{self.url}/targets/",
                              target_dir=str(self._downloads), fetcher=self._fetcher,
                              bootstrap=root)
            updater.refresh()
        except RepositoryError as e:
            raise UpdateRejected(f"repository metadata refused: {e}") from e
        except (DownloadError, OSError) as e:
            raise RepositoryUnavailable(f"repository {self.url} unreachable: {e}") from e
        except ValueError as e:  # a trusted root that does not parse
            raise UpdateRejected(f"trusted root {self._trusted_root}: {e}") from e
        return RepositorySession(updater, self._downloads, self._max_bundle_bytes)
