"""Server-side login sessions and the login rate limit.

Invariants:
- a session id is 32 random bytes (urlsafe), known only to the server and the cookie;
  each session carries its own CSRF token (another 32 random bytes) that every
  state-changing request must echo (compared in constant time);
- a session expires `lifetime_s` after login; an expired one is removed when seen;
- at most `max_sessions` are held: a new login drops the oldest;
- the limiter keeps, per key (client IP, user name), the times of the attempts within
  its window, bounded by the allowed count, and at most `max_keys` keys (oldest first out).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Session:
    """One login: who, as which role, its CSRF token, and when it expires (unix s)."""

    id: str
    user: str
    role: str
    csrf_token: str
    expires_at_s: float

    def csrf_ok(self, token: str | None) -> bool:
        """Whether `token` is this session's CSRF token (constant-time compare)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token.encode())


class Sessions:
    """See the module docstring. `clock` is unix seconds."""

    def __init__(self, *, lifetime_s: float, max_sessions: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        self._lifetime_s = lifetime_s
        self._max = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, role: str) -> Session:
        session = Session(id=secrets.token_urlsafe(32), user=user, role=role,
                          csrf_token=secrets.token_urlsafe(32),
                          expires_at_s=self._clock() + self._lifetime_s)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, None if unknown or expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at_s <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)


class RateLimiter:
    """At most `limit` attempts per key within `window_s` (sliding window)."""

    def __init__(self, *, limit: int, window_s: float, max_keys: int = 10_000,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_keys = max_keys
        self._mono = mono
        self._lock = threading.Lock()
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after_s(self, key: str) -> float:
        """Seconds until `key` may try again (0: it may now). Does not count."""
        now = self._mono()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                return 0.0
            while hits and hits[0] <= now - self._window_s:
                hits.popleft()
            if len(hits) < self._limit:
                return 0.0
            return max(0.001, hits[0] + self._window_s - now)

    def hit(self, key: str) -> None:
        """Count one attempt for `key`."""
        now = self._mono()
        with self._lock:
            hits = self._hits.pop(key, None) or deque(maxlen=self._limit)
            hits.append(now)
            self._hits[key] = hits
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
