"""The cloud config file (collector, fleet store, API) and the CLI's refusals."""

from __future__ import annotations

import pytest

from cloud import cli
from cloud.config import CollectorConfig, load_config, parse_config
from cloud.errors import ConfigError


def test_defaults_and_a_full_file(tmp_path):
    secret = tmp_path / "collector.secret"
    secret.write_text("hunter2hunter2\nignored\n", "utf-8")
    token = tmp_path / "api.token"
    token.write_text("0123456789abcdef0123\n", "utf-8")
    path = tmp_path / "cloud.yaml"
    path.write_text(f"""
database: {{url: 'sqlite:///{tmp_path / 'cloud.db'}', synchronous: FULL}}
store: {{quarantine_keep_bytes: 100}}
collector:
  group: plant1-collectors
  workers: 2
  broker: {{client_id: collector-a, host: mqtt.example, port: 8883, username: collector,
           password_file: {secret}, tls: {{ca_file: /etc/ssl/ca.crt}}}}
api: {{port: 9000, token_file: {token}}}
""", "utf-8")
    cfg = load_config(path)
    assert cfg.collector is not None
    assert cfg.api is not None
    assert cfg.collector.broker.secret().get_secret_value() == "hunter2hunter2"
    assert cfg.api.secret().get_secret_value() == "0123456789abcdef0123"
    assert cfg.api.host == "127.0.0.1"
    assert cfg.database.synchronous == "FULL"
    assert cfg.database.is_sqlite
    assert cfg.store.quarantine_keep_bytes == 100
    assert CollectorConfig().session_expiry_s > 0
    assert parse_config(None).collector is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("collector: {nope: 1}", "collector.nope"),
        ("collector: {broker: {port: 70000}}", "collector.broker.port"),
        ("collector: {group: 'Bad/Group'}", "collector"),
        ("collector: {broker: {client_id: 'has space'}}", "collector.broker.client_id"),
        ("collector: {receive_maximum: 5000, queue_max_messages: 100}", "collector"),
        ("collector: {broker: {password: x, password_file: /x}}", "collector.broker"),
        ("collector: {broker: {tls: {cert_file: /c}}}", "collector.broker.tls"),
        ("api: {port: 1}", "api"),
        ("api: {token: a, token_file: /b}", "api"),
        ("database: {synchronous: OFF}", "database.synchronous"),
        ("database: {url: 'mysql://h/db'}", "database.url: unsupported database driver"),
        ("database: {url: 'postgresql://h/db'}", "database.url: unsupported database driver"),
        ("database: {url: 'sqlite://'}", "database.url: an SQLite URL needs a file path"),
        ("database: {url: 'not a url'}", "database.url: not a database URL"),
        ("database: {pool_size: 0}", "database.pool_size"),
        ("store: {path: /var/lib/fleet.db}", "store: path moved to database.url"),
        ("store: {busy_timeout_ms: 5}", "store: busy_timeout_ms moved to database.busy_"),
        ("store: [1]", "store"),
    ],
)
def test_bad_keys_are_named(tmp_path, text, where):
    path = tmp_path / "cloud.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=rf"cloud\.yaml: {where}"):
        load_config(path)


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [", "utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_secrets_that_cannot_be_used(tmp_path):
    cfg = parse_config({"api": {"token": "short"},
                        "collector": {"broker": {"username": "c",
                                                       "password_file": str(tmp_path / "no")}}})
    assert cfg.api is not None
    assert cfg.collector is not None
    with pytest.raises(ConfigError, match="16 characters"):
        cfg.api.secret()
    with pytest.raises(ConfigError, match="cannot read the password file"):
        cfg.collector.broker.secret()


def test_collect_and_serve_refuse_a_config_without_their_section(tmp_path, capsys):
    path = tmp_path / "cloud.yaml"
    path.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'cloud.db'}'}}\n", "utf-8")
    assert cli.main(["collect", "--config", str(path)]) == 2
    assert "no `collector` section" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(path)]) == 2
    assert "no `api` section" in capsys.readouterr().err
    assert cli.main(["collect", "--config", str(tmp_path / "missing.yaml")]) == 2
