"""Secrets stay with their owner: keylog files, pre-shared keys, the control socket.

Root reads any file whatever its mode, so these tests look at the modes ikecore creates
and at its refusals themselves, never at whether another user could open a file. Where
a test needs another user it uses uid 65534 (nobody), and only when running as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ikecore.cli.main import main
from ikecore.cli.serve import KeyLog
from ikecore.config import load_config, psk_from_flags, read_psk_file
from ikecore.errors import ConfigError
from ikecore.monitor.control import ControlServer
from ikecore.monitor.control_client import (
    ControlClient,
    ControlError,
    check_control_path,
    default_control_directory,
    default_control_path,
)

ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, port 500, another user)")


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ikecore(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          preexec_fn=lambda: os.umask(0o022))


class _Serve:
    """A real ``ikecore serve`` subprocess, started with a umask that lets others read."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None, ready: str = "listening on") -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", *argv, "--duration", "60"],
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, text=True,
                                        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                                        preexec_fn=lambda: os.umask(0o022))
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(ready in line for line in self.lines):
            line = self.process.stderr.readline()  # type: ignore[union-attr]
            assert line and time.monotonic() < deadline, "".join(self.lines)
            self.lines.append(line)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- 1. keylog files ---------------------------------------------------------------------

def test_a_keylog_is_created_0600_whatever_the_umask(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "ike.keys"
    keylog = KeyLog(str(path))
    keylog("0011223344556677,00112233445566778899aabbccddeeff")
    keylog("8899aabbccddeeff,ffeeddccbbaa99887766554433221100")
    assert _mode(path) == 0o600
    assert path.read_text().split() == ["0011223344556677,00112233445566778899aabbccddeeff",
                                        "8899aabbccddeeff,ffeeddccbbaa99887766554433221100"]


def test_an_existing_keylog_others_can_read_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ike.keys"
    path.write_text("earlier line\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        KeyLog(str(path), "gateway.keylog")
    message = str(info.value)
    assert message.startswith("gateway.keylog: ") and "\n" not in message
    assert f"chmod 600 {path}" in message and "0644" in message
    assert _mode(path) == 0o644 and path.read_text() == "earlier line\n"  # refused, not changed
    path.chmod(0o600)
    KeyLog(str(path))("next line")  # an owner-only file is appended to
    assert path.read_text() == "earlier line\nnext line\n"


@needs_root
def test_a_keylog_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ike.keys"
    path.write_text("")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"--keylog: .* belongs to uid {NOBODY}"):
        KeyLog(str(path))


def test_connect_refuses_a_keylog_others_can_read_before_sending_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ike.keys"
    path.write_text("")
    path.chmod(0o640)
    started = time.monotonic()
    code = main(["connect", f"127.0.0.1:{_free_port()}", "--psk", "x", "--keylog", str(path), "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("ikecore connect: --keylog: ") and err.count("\n") == 1 and "chmod 600" in err
    assert time.monotonic() - started < 1  # refused at start, not after a negotiation


# --- 2. the pre-shared key off the command line -------------------------------------------

def test_a_psk_file_gives_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    for text, expected in (("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("with space \r\nsecond line\n",
                                                                          "with space ")):
        path.write_text(text)
        path.chmod(0o600)
        assert read_psk_file(str(path)) == expected
    assert psk_from_flags(None, str(path), {}) == "with space "
    assert psk_from_flags(None, None, {"IKECORE_PSK": "from-env"}) == "from-env"
    assert psk_from_flags("flag", None, {"IKECORE_PSK": "from-env"}) == "flag"
    assert psk_from_flags(None, None, {}) == ""
    with pytest.raises(ConfigError, match="--psk-file: give --psk or --psk-file, not both"):
        psk_from_flags("flag", str(path), {})
    path.write_text("\nsecond\n")
    with pytest.raises(ConfigError, match="--psk-file: the first line of .* is empty"):
        read_psk_file(str(path))
    with pytest.raises(ConfigError, match="--psk-file: cannot read"):
        read_psk_file(str(tmp_path / "missing"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o020])
def test_a_psk_file_others_may_access_is_refused_as_ssh_refuses_a_key(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "psk"
    path.write_text("s3cret\n")
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        read_psk_file(str(path))
    message = str(info.value)
    assert message == (f"--psk-file: {path} is accessible by other users (mode {mode:04o}); chmod 600 {path}")


def test_serve_refuses_a_readable_psk_file_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    done = _ikecore("serve", "--listen", f"127.0.0.1:{_free_port()}", "--psk-file", str(path), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"ikecore serve: --psk-file: {path} is accessible by other users (mode 0644); " \
                          f"chmod 600 {path}\n"


def test_psk_file_and_environment_serve_connect_and_loadtest(tmp_path: Path) -> None:
    """A gateway with ``--psk-file``; ``connect`` with ``$IKECORE_PSK`` and ``--keylog``
    (created 0600 under umask 022); ``loadtest`` with ``--psk-file``. No PSK in any argv."""
    secret = "file-and-environment-secret"
    psk = tmp_path / "psk"
    psk.write_text(secret + "\n")
    psk.chmod(0o600)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "IKECORE_PSK"}
    serve = _Serve("--listen", f"127.0.0.1:{port}", "--psk-file", str(psk), "--quiet", env=env)
    try:
        with open(f"/proc/{serve.process.pid}/cmdline", "rb") as handle:
            assert secret.encode() not in handle.read()
        keylog = tmp_path / "connect.keys"
        done = _ikecore("connect", f"127.0.0.1:{port}", "--local", "127.0.9.1:0", "--json", "--keylog", str(keylog),
                        env={**env, "IKECORE_PSK": secret})
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["ok"] and result["quick_mode"]
        assert _mode(keylog) == 0o600
        assert keylog.read_text().split(",")[0] == result["main_mode"]["initiator_cookie"]
        wrong = _ikecore("connect", f"127.0.0.1:{port}", "--local", "127.0.9.2:0", "--json", "--timeout", "3",
                         env={**env, "IKECORE_PSK": "not-the-secret"})
        assert wrong.returncode == 1 and not json.loads(wrong.stdout)["ok"]
        load = _ikecore("loadtest", f"127.0.0.1:{port}", "--peers", "3", "--psk-file", str(psk),
                        "--first-address", "127.0.9.10", "--json", "--no-progress", env=env)
        assert load.returncode == 0, load.stderr + load.stdout
        assert json.loads(load.stdout)["established"] == 3
    finally:
        serve.close()


def test_psk_help_warns_that_ps_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "connect", "loadtest"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--psk-file FILE" in text and "visible to every user in ps" in text and "$IKECORE_PSK" in text


GATEWAY_ONLY = """
[gateway]
listen = ["127.0.0.1:500"]
"""
WITH_PSK = GATEWAY_ONLY + """
[[filter]]
name = "everyone"
psk = "s3cret"
"""


def test_a_config_holding_a_psk_must_be_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(WITH_PSK)
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (f"config: {path} holds a pre-shared key and is accessible by other users "
                               f"(mode 0644); chmod 600 {path}")
    path.chmod(0o600)
    assert load_config(str(path)).filters[0].psk() == b"s3cret"
    path.write_text(GATEWAY_ONLY)  # nothing secret in it: its mode is the owner's business
    path.chmod(0o644)
    assert load_config(str(path)).listen == (("127.0.0.1", 500),)


def test_serve_refuses_a_readable_config_with_a_psk(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(WITH_PSK.replace("127.0.0.1:500", f"127.0.0.1:{_free_port()}"))
    path.chmod(0o640)
    done = _ikecore("serve", "--config", str(path), "--duration", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("ikecore serve: --config: ") and done.stderr.count("\n") == 1
    assert f"chmod 600 {path}" in done.stderr


# --- 3. the control socket's directory ----------------------------------------------------

def test_the_default_control_socket_is_in_a_directory_of_its_own(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.delenv("IKECORE_CONTROL", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_control_path() == str(tmp_path / "ikecore" / "control.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_control_path() == "/run/ikecore/control.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    assert default_control_directory() == "/tmp/ikecore-1234"
    assert default_control_path() == "/tmp/ikecore-1234/control.sock"
    monkeypatch.setenv("IKECORE_CONTROL", "/somewhere/else.sock")
    assert default_control_path() == "/somewhere/else.sock"


def _serve_control(path: str) -> Any:
    """Start a ControlServer on ``path`` in a private loop; returns (loop, server) or raises."""
    loop = asyncio.new_event_loop()
    server = ControlServer(views=None)  # type: ignore[arg-type]  # ping needs no views
    try:
        loop.run_until_complete(server.start(path))
    except BaseException:
        loop.close()
        raise
    return loop, server


def _stop_control(loop: asyncio.AbstractEventLoop, server: ControlServer) -> None:
    server.close()
    loop.close()


def test_serve_makes_the_default_directory_0700_and_monitor_finds_it(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "IKECORE_CONTROL"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    serve = _Serve("--listen", f"127.0.0.1:{_free_port()}", "--psk", "x", "--quiet", "--control", env=env,
                   ready="control socket")
    try:
        directory = runtime / "ikecore"
        assert _mode(directory) == 0o700 and stat.S_ISDIR(os.lstat(directory).st_mode)
        assert stat.S_ISSOCK(os.lstat(directory / "control.sock").st_mode)
        assert _mode(directory / "control.sock") == 0o600
        assert f"control socket {directory / 'control.sock'}" in "".join(serve.lines)
        shown = _ikecore("monitor", "main-mode", "statistics", "--format", "json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "active_acquire" in json.loads(shown.stdout)
    finally:
        serve.close()
    assert not (runtime / "ikecore" / "control.sock").exists()


def test_an_unsafe_default_directory_is_refused_by_server_and_client(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.delenv("IKECORE_CONTROL", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = tmp_path / "ikecore"
    path = str(directory / "control.sock")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    directory.symlink_to(elsewhere)  # a link another user might have planted
    with pytest.raises(OSError, match="is not a directory"):
        _serve_control(path)
    with pytest.raises(ControlError, match="is not a directory"):
        ControlClient(path)
    directory.unlink()
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(OSError, match=r"writable by other users \(mode 0777\); chmod 700"):
        _serve_control(path)
    with pytest.raises(ControlError, match="writable by other users"):
        check_control_path(path)
    directory.chmod(0o700)
    loop, server = _serve_control(path)
    try:
        assert loop.run_until_complete(asyncio.to_thread(_ping, path)) == {"ok": True}
    finally:
        _stop_control(loop, server)


def _ping(path: str) -> dict[str, Any]:
    with ControlClient(path, timeout=5) as client:
        return client.request({"op": "ping"})


@needs_root
def test_a_default_directory_of_another_user_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IKECORE_CONTROL", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = tmp_path / "ikecore"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(OSError, match=f"belongs to uid {NOBODY}, not to you"):
        _serve_control(str(directory / "control.sock"))
    with pytest.raises(ControlError, match=f"belongs to uid {NOBODY}, not to you"):
        ControlClient(str(directory / "control.sock"))


@needs_root
def test_without_a_runtime_directory_a_user_gets_a_private_directory_in_tmp(
        monkeypatch: pytest.MonkeyPatch, umask_zero: None) -> None:
    """A user without $XDG_RUNTIME_DIR: ``/tmp/ikecore-UID/``, made 0700; one that someone
    else made first (here root, for the user) is refused until it is the user's."""
    uid = 54321 + os.getpid() % 1000  # a user of this test alone
    monkeypatch.delenv("IKECORE_CONTROL", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    directory = Path(f"/tmp/ikecore-{uid}")
    path = default_control_path()
    assert path == f"{directory}/control.sock"
    shutil.rmtree(directory, ignore_errors=True)
    try:
        with pytest.raises(ControlError, match=f"{directory} belongs to uid 0, not to you \\(uid {uid}\\)"):
            check_control_path(path, create=True)  # made by root (this process), not by the user
        assert _mode(directory) == 0o700
        os.chown(directory, uid, uid)
        check_control_path(path, create=True)
        check_control_path(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@needs_root
def test_a_control_socket_of_another_user_is_refused(tmp_path: Path) -> None:
    """Client: a socket file of another user is not asked; server: not replaced."""
    path = str(tmp_path / "c.sock")
    loop, server = _serve_control(path)
    try:
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(ControlError, match=f"belongs to uid {NOBODY}, another user"):
            ControlClient(path)
        done = _ikecore("monitor", "main-mode", "statistics", "--control", path, "--format", "json")
        assert done.returncode != 0 and f"belongs to uid {NOBODY}" in done.stderr
        assert done.stderr.count("\n") == 1
    finally:
        _stop_control(loop, server)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody serves, left by another user
    stale.close()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(OSError, match=f"belongs to uid {NOBODY}"):
        _serve_control(path)
    assert os.lstat(path).st_uid == NOBODY  # not replaced


@needs_root
def test_a_gateway_run_by_another_user_is_not_asked(tmp_path: Path) -> None:
    """SO_PEERCRED: even a socket file of ours, when another user's process serves it
    (moved there after a check, say), is refused after connecting."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run as another user")
    theirs = Path(tempfile.mkdtemp(prefix="ikecore-test-nobody-"))
    try:
        os.chown(theirs, NOBODY, NOBODY)
        script = ("import socket,sys,time\n"
                  "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(4)\n"
                  "print('ready',flush=True)\n"
                  "while True:\n"
                  " c,_=s.accept(); c.recv(100); c.sendall(b'{\"ok\": true}\\n'); c.close()\n")
        fake = subprocess.Popen([python, "-c", script, str(theirs / "s.sock")], user=NOBODY, group=NOBODY,
                                stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            assert fake.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            ours = tmp_path / "c.sock"
            shutil.move(str(theirs / "s.sock"), ours)
            os.chown(ours, 0, 0)
            check_control_path(str(ours))  # the path looks like ours
            with pytest.raises(ControlError, match=f"served by uid {NOBODY}, another user"):
                ControlClient(str(ours))
        finally:
            fake.kill()
            fake.wait(5)
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


# --- 4. connect --local ADDR:500 floats to ADDR:4500 ----------------------------------------

def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@needs_root
def test_connect_from_port_500_floats_to_a_nat_t_socket_of_its_own() -> None:
    """``ikecore connect --local ADDR:500 --nat-t force`` against a real ``ikecore serve``:
    the initiator moves to ADDR:4500 (RFC 3947 section 4) and has a socket there."""
    server, client = "127.0.77.1", "127.0.77.2"
    if not all(_port_free(a, p) for a in (server, client) for p in (500, 4500)):
        pytest.skip("127.0.77.1/2 ports 500/4500 are taken")
    serve = _Serve("--listen", f"{server}:500", "--listen", f"{server}:4500", "--psk", "natt", "--quiet")
    try:
        done = _ikecore("connect", server, "--local", f"{client}:500", "--psk", "natt", "--nat-t", "force",
                        "--json", "--timeout", "5", timeout=30)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["ok"], result
        main_mode = result["main_mode"]
        assert (main_mode["local_port"], main_mode["peer_port"], main_mode["encapsulated"]) == (4500, 4500, True)
        assert len(result["quick_mode"]) == 1
        assert "no socket" not in done.stderr
    finally:
        serve.close()
