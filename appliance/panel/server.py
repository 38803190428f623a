"""The panel's HTTP server: uvicorn in one thread of the appliance process.

`start` binds the socket itself (so port 0 works and the bound port is known before the
first request: `port`), then serves from a daemon thread; `stop` asks uvicorn to exit
and waits (bounded) for the thread. Started and stopped by appliance/app.py.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from fastapi import FastAPI

from appliance.errors import ConfigError
from appliance.panel.config import PanelConfig

logger = logging.getLogger(__name__)


class PanelServer:
    """See the module docstring."""

    def __init__(self, cfg: PanelConfig, app: FastAPI) -> None:
        self._cfg = cfg
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._cfg.tls else "http"
        host = f"[{self._cfg.host}]" if ":" in self._cfg.host else self._cfg.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve. Raises ConfigError when the address cannot be bound or the
        TLS files cannot be read."""
        cfg = self._cfg
        cfg.warn_if_exposed()
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"panel: cannot listen on {cfg.host}:{cfg.port}: {e}") from e
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        tls = {}
        if cfg.tls is not None:
            for path in (cfg.tls.cert_file, cfg.tls.key_file):
                if not path.is_file():
                    sock.close()
                    raise ConfigError(f"panel.tls: {path} is not a readable file")
            tls = {"ssl_certfile": str(cfg.tls.cert_file), "ssl_keyfile": str(cfg.tls.key_file)}
        config = uvicorn.Config(self._app, log_config=None, access_log=False,
                                timeout_graceful_shutdown=2, **tls)  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]),
                                        name="panel-http", daemon=True)
        self._thread.start()
        logger.info("panel serving on %s", self.url)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("panel server did not stop within %.1f s", timeout_s)
            self._thread = None
        self._server = None
