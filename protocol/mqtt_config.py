"""Broker settings: the one spelling of "where is the MQTT broker and how do I log in",
used by the appliance (`telemetry.broker`) and the cloud collector (`collector.broker`).

    broker:
      host: mqtt.plant1.example
      port: 8883
      client_id: line.plant1.line-7  # optional on a line: line.<site>.<line>
      keepalive_s: 30
      username: line.plant1.line-7   # the shipped broker makes it the client id
      password_file: /etc/lineguard/mqtt.secret   # or `password:` inline
      tls: {ca_file: /etc/lineguard/ca.crt, cert_file: ..., key_file: ...}
      reconnect: {initial_s: 0.5, max_s: 30}

Secrets are `SecretStr` (never in a repr, a log line or a validation error); a
`password_file` holds the password on its first line. Files (password, TLS) are read
when a client is built, not when the config is validated, so `check-config` on another
machine does not need them.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from protocol.backoff import BackoffConfig
from protocol.configfile import ConfigFileError

# MQTT client ids: printable ASCII without spaces; mosquitto takes up to 65535 bytes,
# MQTT 3.1.1 brokers only guarantee 23; keep them short and stable.
CLIENT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class BrokerSetupError(ConfigFileError):
    """Broker settings that cannot be used on this machine: a password file or TLS file
    that cannot be read or is not valid. Each package translates it at its edge."""


class TlsConfig(BaseModel):
    """TLS to the broker: the CA that signed the broker's certificate and, for brokers
    that require client certificates, this client's certificate and key (PEM files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    """CA bundle to verify the broker with; None: the system's trust store."""
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True
    """Verify that the broker's certificate names `host`. Turn off only for a broker
    reached by an address its certificate does not list (the chain is still verified)."""

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class BrokerConfig(BaseModel):
    """Where the MQTT broker is, how to log in, and how fast to reconnect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN)
    """MQTT client id; None: the process picks one (see its config)."""
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str | None = Field(None, min_length=1, max_length=256)
    password: SecretStr | None = None
    password_file: Path | None = None
    """A file whose first line is the password (better than `password` inline)."""
    tls: TlsConfig | None = None
    reconnect: BackoffConfig = Field(default_factory=BackoffConfig)
    """Delay before reconnecting after a failure: doubles from `initial_s` to `max_s`."""

    @model_validator(mode="after")
    def _login(self) -> BrokerConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) \
                and self.username is None:
            raise ValueError("a password needs a username")
        return self

    def secret(self) -> SecretStr | None:
        """The password, read from `password_file` if that is set (its first line,
        stripped). Raises BrokerSetupError if the file cannot be read or is empty."""
        if self.password_file is None:
            return self.password
        try:
            text = self.password_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise BrokerSetupError(
                f"cannot read the password file {self.password_file}: {reason}") from e
        first = text.splitlines()[0].strip() if text.strip() else ""
        if not first:
            raise BrokerSetupError(f"the password file {self.password_file} is empty")
        return SecretStr(first)


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for `tls`: verifies the broker (and its name, unless
    `check_hostname` is off) and loads the client certificate if one is set.

    Raises BrokerSetupError if a file cannot be read or is not a valid PEM.
    """
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as e:
        raise BrokerSetupError(f"tls: cannot load certificates: {e}") from e
    context.check_hostname = tls.check_hostname
    return context
