"""deploy/mosquitto: the ACL generator, the password-file helper, the committed files."""

from __future__ import annotations

import os
import stat

import pytest

from tests.protocol.deploy_scripts import DEPLOY_DIR, load

make_acl = load("make_acl")
make_passwd = load("make_passwd")

needs_mosquitto_passwd = pytest.mark.skipif(
    not os.access(make_passwd.DEFAULT_MOSQUITTO_PASSWD, os.X_OK),
    reason="mosquitto_passwd is not installed (Debian package mosquitto)",
)


def test_parse_lines():
    text = "# fleet\nplant1/line-1\n\n  plant1/line_2  # comment\nplant2/a\n"
    assert make_acl.parse_lines(text) == [
        ("plant1", "line-1"),
        ("plant1", "line_2"),
        ("plant2", "a"),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("plant1", "not <site>/<line>"),
        ("plant1/line/x", "not <site>/<line>"),
        ("plant1/+", "line '\\+'"),
        ("a b/line-1", "site 'a b'"),
        ("Plant1/line-1", "site"),
        ("plant1/line.1", "line"),
        ("plant1/line-1\nplant1/line-1", "line 2: plant1/line-1 is listed twice"),
    ],
)
def test_parse_lines_rejects(text, match):
    with pytest.raises(make_acl.AclError, match=match):
        make_acl.parse_lines(text)


def test_render_acl_grants_each_line_only_its_own_topics():
    text = make_acl.render_acl([("plant1", "line-a")], ["collector"], ["release"])
    blocks = {b.splitlines()[1]: b.splitlines()[2:] for b in text.split("\n\n")[1:] if b}
    assert blocks["user collector"] == ["topic read lineguard/#"]
    assert blocks["user release"] == ["topic write lineguard/+/+/cmd/#"]
    assert blocks["user line.plant1.line-a"] == [
        "topic write lineguard/plant1/line-a/status",
        "topic write lineguard/plant1/line-a/metrics",
        "topic write lineguard/plant1/line-a/events/#",
        "topic write lineguard/plant1/line-a/drift",
        "topic write lineguard/plant1/line-a/model",
        "topic read lineguard/plant1/line-a/cmd/#",
    ]
    assert "pattern" not in text
    assert "readwrite" not in text


@pytest.mark.parametrize("name", ["", "has space", "a:b", "line.plant1.x", "x\ntopic write #"])
def test_render_acl_refuses_bad_service_accounts(name):
    with pytest.raises(make_acl.AclError):
        make_acl.render_acl([], [name], [])


def test_committed_acl_example_is_generated():
    lines = make_acl.parse_lines((DEPLOY_DIR / "lines.example.txt").read_text("utf-8"))
    assert (DEPLOY_DIR / "acl.example").read_text("utf-8") == make_acl.render_acl(lines), (
        "run: python deploy/mosquitto/make_acl.py deploy/mosquitto/lines.example.txt "
        "-o deploy/mosquitto/acl.example"
    )


def test_make_acl_cli(tmp_path):
    (tmp_path / "lines.txt").write_text("plant1/line-1\n", "utf-8")
    out = tmp_path / "acl"
    assert make_acl.main([str(tmp_path / "lines.txt"), "-o", str(out), "--collector", "c1"]) == 0
    assert "user c1\n" in out.read_text("utf-8")
    assert "user line.plant1.line-1\n" in out.read_text("utf-8")
    (tmp_path / "bad.txt").write_text("plant1/+\n", "utf-8")
    assert make_acl.main([str(tmp_path / "bad.txt"), "-o", str(tmp_path / "acl2")]) == 1
    assert not (tmp_path / "acl2").exists()


def test_accounts_in_acl():
    text = make_acl.render_acl([("p", "l1"), ("p", "l2")])
    assert make_passwd.accounts_in_acl(text) == ["collector", "release", "line.p.l1", "line.p.l2"]
    with pytest.raises(make_passwd.PasswdError):
        make_passwd.accounts_in_acl("user a:b\n")


def test_ensure_credentials_keeps_existing_secrets(tmp_path):
    first = make_passwd.ensure_credentials(tmp_path / "cred", ["a", "b"])
    assert len(set(first.values())) == 2
    assert all(len(s) >= 32 for s in first.values())
    mode = stat.S_IMODE((tmp_path / "cred" / "a").stat().st_mode)
    assert mode == 0o600
    again = make_passwd.ensure_credentials(tmp_path / "cred", ["a", "b", "c"])
    assert again["a"] == first["a"]
    assert again["b"] == first["b"]
    assert again["c"] not in first.values()


@needs_mosquitto_passwd
def test_password_file_is_hashed(tmp_path):
    path = tmp_path / "passwd"
    make_passwd.write_password_file(path, {"collector": "s3cret-collector", "line.p.l": "pw2"})
    text = path.read_text("utf-8")
    assert "s3cret-collector" not in text
    names = [row.split(":", 1)[0] for row in text.splitlines()]
    assert names == ["collector", "line.p.l"]
    assert all(row.split(":", 1)[1].startswith("$7$") for row in text.splitlines())
    assert list(tmp_path.iterdir()) == [path]  # no plain-text temp file left behind


@needs_mosquitto_passwd
def test_make_passwd_cli(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text(make_acl.render_acl([("p", "l1")]), "utf-8")
    assert make_passwd.main([str(acl), str(tmp_path / "out")]) == 0
    names = [r.split(":")[0] for r in (tmp_path / "out" / "passwd").read_text("utf-8").splitlines()]
    assert names == ["collector", "release", "line.p.l1"]
    assert sorted(p.name for p in (tmp_path / "out" / "credentials").iterdir()) == sorted(names)


def test_write_password_file_without_tool(tmp_path):
    with pytest.raises(make_passwd.PasswdError, match="not found"):
        make_passwd.write_password_file(tmp_path / "p", {"a": "b"}, str(tmp_path / "nope"))
