"""The command line end to end: `ikecore serve` and `ikecore connect` over real UDP on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

PSK = "cli-secret"


def _free_port(host: str = "127.0.0.1", family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ikecore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def server() -> Iterator[tuple[str, int, subprocess.Popen[str]]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                             "--psk", PSK, "--ike", "aes128-sha256-modp2048,3des-sha1-modp1024",
                             "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line
    yield "127.0.0.1", port, proc
    proc.terminate()
    proc.wait(10)


def test_connect_to_serve_prints_json_with_the_contract_keys(server: tuple[str, int, object]) -> None:
    host, port, _ = server
    done = _ikecore("connect", f"{host}:{port}", "--local", "127.0.0.3", "--psk", PSK, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    main = result["main_mode"]
    for key in ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                "diffie_hellman", "initiator_cookie", "responder_cookie"):
        assert key in main
    assert main["me"] == "127.0.0.3" and main["peer"] == host
    assert main["encryption"] == "aes128" and main["diffie_hellman"] == "modp2048"
    (quick,) = result["quick_mode"]
    assert len(quick["spi_in"]) == 8 and len(quick["spi_out"]) == 8


def test_connect_table_output_and_main_mode_only(server: tuple[str, int, object]) -> None:
    host, port, _ = server
    done = _ikecore("connect", f"{host}:{port}", "--local", "127.0.0.4", "--psk", PSK,
                    "--ike", "3des-sha1-modp1024", "--no-quick-mode")
    assert done.returncode == 0, done.stderr
    assert "Diffie-Hellman" in done.stdout and "3des" in done.stdout and "modp1024" in done.stdout
    assert "Quick Mode" not in done.stdout


def test_wrong_psk_exits_non_zero_with_the_reason(server: tuple[str, int, object]) -> None:
    host, port, _ = server
    done = _ikecore("connect", f"{host}:{port}", "--local", "127.0.0.5", "--psk", "wrong", "--timeout", "10")
    assert done.returncode == 1
    assert "AUTHENTICATION-FAILED" in done.stderr


def test_no_common_proposal_exits_non_zero(server: tuple[str, int, object]) -> None:
    host, port, _ = server
    done = _ikecore("connect", f"{host}:{port}", "--local", "127.0.0.6", "--psk", PSK,
                    "--ike", "aes256-sha512-ecp521", "--timeout", "10")
    assert done.returncode == 1 and "NO-PROPOSAL-CHOSEN" in done.stderr


def test_user_errors_are_one_line_naming_the_flag() -> None:
    done = _ikecore("connect", "127.0.0.1", "--psk", PSK, "--ike", "aes128-sha256-modp4097")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--ike: unknown DH group" in done.stderr
    done = _ikecore("connect", "not-an-ip", "--psk", PSK)
    assert done.returncode == 2 and "peer:" in done.stderr


def test_ipv6_loopback() -> None:
    try:
        port = _free_port("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    proc = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"[::1]:{port}",
                             "--psk", PSK, "--duration", "30"], stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None and "listening on" in proc.stderr.readline()
        done = _ikecore("connect", f"[::1]:{port}", "--local", "::1", "--psk", PSK, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["main_mode"]["peer"] == "::1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_demo_runs_and_lists_the_seed_columns() -> None:
    started = time.monotonic()
    done = _ikecore("demo", "--peers", "20")
    assert done.returncode == 0, done.stderr
    for column in ("Me", "My ID", "Peer", "Peer ID", "Authentication", "Encryption", "Integrity",
                   "Diffie-Hellman"):
        assert column in done.stdout
    assert "20/20 peers established" in done.stdout
    assert time.monotonic() - started < 60
