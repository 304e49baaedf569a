"""Logging through ``logging`` and exits without tracebacks, end to end.

Real ``python -m ikecore`` processes on loopback: ``serve --log-format json|text`` while
``connect`` negotiates with it (the initiator's own ``--json`` output is the independent
truth for the cookies and SPIs the gateway logs); a reader that closes the pipe early;
SIGINT and SIGTERM to a whole process group (a terminal's ^C) or to the parent alone, for
``serve --workers 2``, ``loadtest`` (one and two generator processes), ``demo`` and
``connect``: no traceback, status 130 for SIGINT, out within 2 s, and an interrupted
load test's partial report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ikecore import events as ev
from ikecore.wire import NotifyType

PSK = "logs-psk-never-printed"
CAPTURE = Path(__file__).parent / "vectors" / "captures" / "qm_rekey.pcapng"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
#: How long a signalled command may take to exit.
EXIT_SECONDS = 2.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ikecore(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _start(*args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``ikecore ARGS`` in a process group of its own (as a shell's job is)."""
    return subprocess.Popen([sys.executable, "-m", "ikecore", *args], stdout=stdout, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_for(proc: subprocess.Popen[str], words: str, seconds: float = 15.0) -> list[str]:
    """stderr lines until one holds ``words`` (bounded in lines and time)."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    for _ in range(200):
        line = proc.stderr.readline()
        assert line, f"exited ({proc.poll()}) before {words!r}: {''.join(lines)}"
        lines.append(line)
        if words in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError("".join(lines))


def _signal(proc: subprocess.Popen[str], signum: int, group: bool) -> tuple[int, float, str, str]:
    """Send ``signum`` to the process group or to the process alone; returns (status,
    seconds to exit, stdout, stderr)."""
    sent = time.monotonic()
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode, time.monotonic() - sent, out or "", err


@pytest.fixture
def gateway() -> Iterator[int]:
    """A one-process gateway on a loopback port (quiet: the load tests talk to it)."""
    port = _free_port()
    proc = _start("serve", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet", "--duration", "60",
                  "--dh-threads", "0")
    try:
        _wait_for(proc, "listening on")
        yield port
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# --- the outside representation of events ---------------------------------------------------------


def test_event_fields_are_hex_enum_names_and_address_text() -> None:
    notify = ev.NotifyReceived(time=1.5, handle=None, remote=("fd00::2", 4500),
                               notify_type=NotifyType.INITIAL_CONTACT, protected=True)
    assert ev.event_fields(notify) == {"event": "notify_received", "time": 1.5, "handle": None,
                                       "remote": "[fd00::2]:4500", "notify_type": "INITIAL_CONTACT",
                                       "protected": True}
    delete = ev.DeleteReceived(time=2.0, handle=7, protocol_id=3, spis=(b"+\xac\x8c?", b"\x00\x01\x02\xff"))
    fields = ev.event_fields(delete)
    assert fields["protocol_id"] == "IPSEC_ESP" and fields["spis"] == ["2bac8c3f", "000102ff"]
    established = ev.Phase1Established(time=3.0, handle=1, role="responder", local=("192.0.2.1", 500),
                                       remote=("192.0.2.2", 500), initiator_cookie=bytes(range(8)),
                                       responder_cookie=b"\xfe" * 8, proposal="aes128-sha256-modp2048",
                                       duration=0.25)
    fields = ev.event_fields(established)
    assert fields["event"] == "phase1_established" and fields["remote"] == "192.0.2.2:500"
    assert fields["initiator_cookie"] == "0001020304050607" and fields["responder_cookie"] == "fe" * 8
    assert fields["duration"] == 0.25
    restored = ev.event_fields(ev.SasRestored(time=0.0, isakmp=2, ipsec=3, sas=((1, 2), (4, 1))))
    assert restored["sas"] == [[1, 2], [4, 1]]
    # an unknown notify number stays a number; every value is JSON as it is
    invalid = ev.event_fields(ev.InvalidPacketReceived(time=0.0, remote=("10.0.0.1", 500), reason="x",
                                                       notify_type=40000))
    assert invalid["notify_type"] == 40000
    json.dumps([fields, restored, invalid])


# --- serve's log lines -------------------------------------------------------------------------------


def _negotiate(*log_flags: str, control: Path | None = None) -> tuple[dict[str, Any], str]:
    """serve with ``log_flags``; connect negotiates and deletes; returns connect's JSON
    and serve's standard error. Up when its ``listening on`` line comes or, with
    ``control``, when its control socket appears."""
    port = _free_port()
    proc = _start(*log_flags, "serve", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--duration", "30",
                  "--dh-threads", "0", *(["--control", str(control)] if control else []))
    try:
        head: list[str] = []
        if control is None:
            head = _wait_for(proc, "listening on")
        else:
            for _ in range(300):
                if control.exists() or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert control.exists()
        done = _ikecore("connect", f"127.0.0.1:{port}", "--local", "127.0.0.7", "--psk", PSK, "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        time.sleep(0.3)  # the Delete reaches the gateway
    finally:
        status, _seconds, _out, err = _signal(proc, signal.SIGTERM, group=False)
    assert status == 0, err
    return result, "".join(head) + err


def test_serve_logs_one_json_object_per_line_with_hex_and_enum_names() -> None:
    result, err = _negotiate("--log-format", "json")
    records = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    for record in records:
        assert ISO_UTC.match(record["time"]) and record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
        assert record["logger"].startswith("ikecore.")
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_event.setdefault(str(record.get("event")), []).append(record)
    main_mode = result["main_mode"]
    (quick,) = result["quick_mode"]
    (established,) = by_event["phase1_established"]
    assert established["logger"] == "ikecore.gateway" and established["remote"] == f"127.0.0.7:{main_mode['local_port']}"
    assert established["initiator_cookie"] == str(main_mode["initiator_cookie"]).lower()
    assert established["responder_cookie"] == str(main_mode["responder_cookie"]).lower()
    (phase2,) = by_event["phase2_established"]
    # the gateway's inbound SPI is the initiator's outbound one, and the other way round
    assert phase2["spi_in"] == str(quick["spi_out"]).lower() and phase2["spi_out"] == str(quick["spi_in"]).lower()
    assert {"notify_type": "INITIAL_CONTACT"}.items() <= by_event["notify_received"][0].items()
    deletes = {str(r["protocol_id"]): r["spis"] for r in by_event["delete_received"]}
    assert deletes["IPSEC_ESP"] == [phase2["spi_out"]]
    assert deletes["ISAKMP"] == [established["initiator_cookie"] + established["responder_cookie"]]
    (listening,) = by_event["listening"]
    assert listening["logger"] == "ikecore.serve" and listening["addresses"] == [established["local"]]
    assert PSK not in err and "Traceback" not in err


def test_serve_text_log_lines_have_no_python_reprs() -> None:
    result, err = _negotiate("--log-level", "info")
    lines = err.splitlines()
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ikecore\.\S+ ",
                                  line) for line in lines), lines
    for repr_mark in ("b'", 'b"', "<NotifyType", "<ProtocolId", "('127.", "{'"):
        assert repr_mark not in err, (repr_mark, err)
    main_mode = result["main_mode"]
    established = [line for line in lines if " event=phase1_established " in line]
    assert len(established) == 1
    assert f"initiator_cookie={str(main_mode['initiator_cookie']).lower()}" in established[0]
    assert any("notify_type=INITIAL_CONTACT" in line for line in lines)
    assert PSK not in err


def test_log_level_warning_leaves_the_events_out(tmp_path: Path) -> None:
    _result, err = _negotiate("--log-level", "warning", control=tmp_path / "c.sock")
    assert "event=" not in err and "listening on" not in err and "Traceback" not in err


# --- a reader that closes the pipe early -----------------------------------------------------------


def test_decode_into_a_pipe_closed_early_exits_quietly() -> None:
    # 50 times the capture: far more than a pipe holds, so the writer meets the closed pipe
    proc = subprocess.Popen([sys.executable, "-m", "ikecore", "decode", *[str(CAPTURE)] * 50],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    status = proc.wait(30)
    assert first.startswith(b"Frame 1:")
    assert err == b"" and status == 141  # 128 + SIGPIPE, as the shell reports for coreutils


# --- signals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_serve_stops_on_sigint_without_tracebacks(workers: str, group: bool) -> None:
    port = _free_port()
    proc = _start("serve", "--workers", workers, "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--dh-threads",
                  "0", "--log-format", "json")
    _wait_for(proc, "listening on")
    status, seconds, _out, err = _signal(proc, signal.SIGINT, group)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert status == 130 and seconds < EXIT_SECONDS, (status, seconds, err)
    for line in err.splitlines():
        json.loads(line)  # the workers' lines too: the same format


def test_serve_with_two_workers_tags_worker_records() -> None:
    port = _free_port()
    proc = _start("serve", "--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--dh-threads", "0",
                  "--log-format", "json")
    try:
        _wait_for(proc, "listening on")
        for index in range(4):  # four initiators: their cookies reach both workers, most likely
            done = _ikecore("connect", f"127.0.0.1:{port}", "--local", f"127.0.0.{20 + index}", "--psk", PSK,
                            "--json", "--no-quick-mode")
            assert done.returncode == 0, done.stderr
        time.sleep(0.3)
    finally:
        status, _seconds, _out, err = _signal(proc, signal.SIGTERM, group=False)
    assert status == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    established = [r for r in records if r.get("event") == "phase1_established"]
    assert len(established) == 4 and all(r["worker"] in (0, 1) for r in established), established
    assert all("worker" not in r for r in records if r.get("event") == "listening")  # the parent's line


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_an_interrupted_load_test_reports_what_it_measured(gateway: int, workers: str, group: bool) -> None:
    proc = _start("loadtest", f"127.0.0.1:{gateway}", "--peers", "100000", "--rate", "100", "--psk", PSK,
                  "--workers", workers, "--json", "--no-progress", "--dh-threads", "0", stdout=subprocess.PIPE)
    time.sleep(3.0)
    assert proc.poll() is None
    status, seconds, out, err = _signal(proc, signal.SIGINT, group)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert status == 130 and seconds < EXIT_SECONDS, (status, seconds, err)
    report = json.loads(out)
    assert report["interrupted"] is True and 1.0 < report["interrupted_after"] < 10.0
    assert 0 < report["established"] <= report["started"] < 100000
    assert report["latency_ms"]["total"]["count"] == report["established"]
    assert "interrupted by SIGINT" in err


def test_an_interrupted_load_test_text_report_says_so(gateway: int) -> None:
    proc = _start("loadtest", f"127.0.0.1:{gateway}", "--peers", "100000", "--rate", "100", "--psk", PSK,
                  "--dh-threads", "0", stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not re.search(r" [1-9]\d*/100000 done", _wait_for(proc, "done")[-1]):   # progress: one line a second
        assert time.monotonic() < deadline
    status, seconds, out, err = _signal(proc, signal.SIGTERM, group=False)
    assert status == 128 + signal.SIGTERM and seconds < EXIT_SECONDS and "Traceback" not in err, err
    first = out.splitlines()[0]
    assert re.search(r"\(interrupted after \d+\.\d s: what was measured until then\)$", first), out
    established = int(re.search(r"established (\d+)", out).group(1))  # type: ignore[union-attr]
    assert established > 0


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_demo_stops_on_sigint_with_its_partial_report(group: bool) -> None:
    proc = _start("demo", "--peers", "100000", "--concurrency", "5", "--no-progress", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the gateway is up; the load test starts
    assert first.startswith("ikecore demo: gateway"), first
    time.sleep(2.0)
    status, seconds, out, err = _signal(proc, signal.SIGINT, group)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert status == 130 and seconds < EXIT_SECONDS, (status, seconds, err)
    assert "interrupted after" in out and "established" in out


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_connect_stops_on_sigint_without_a_traceback(group: bool) -> None:
    port = _free_port()  # nobody answers: connect retransmits until interrupted
    proc = _start("connect", f"127.0.0.1:{port}", "--psk", PSK, "--timeout", "30")
    time.sleep(1.5)
    status, seconds, _out, err = _signal(proc, signal.SIGINT, group)
    assert status == 130 and seconds < EXIT_SECONDS and "Traceback" not in err, (status, seconds, err)


def test_formatters_quote_join_and_drop_secret_fields() -> None:
    import io
    import logging

    from ikecore.cli import logs

    stream = io.StringIO()
    logs.configure("debug", "text", stream=stream)
    try:
        log = logging.getLogger("ikecore.test")
        logs.log_event(log, logging.INFO, "example", reason="deleted by peer", spis=["00ff", "a1b2"], ok=True,
                       psk=PSK, key="00" * 16, left_out=None)
        logs.configure("info", "json", stream=stream, worker=3)
        logs.log_event(log, logging.DEBUG, "hidden")  # below the level
        logs.log_event(log, logging.WARNING, "example", remote="192.0.2.2:500", psk=PSK)
        try:
            raise ValueError("bad value")
        except ValueError:
            log.exception("failed")
    finally:
        logs.configure("info", "text")
        logs.tag_worker(None)
    text, json_line, error_line = stream.getvalue().splitlines()
    assert text.endswith(' INFO ikecore.test event=example reason="deleted by peer" spis=00ff,a1b2 ok=true'), text
    assert json.loads(json_line) == {"time": json.loads(json_line)["time"], "level": "WARNING",
                                     "logger": "ikecore.test", "worker": 3, "event": "example",
                                     "remote": "192.0.2.2:500"}
    assert json.loads(error_line)["message"] == "failed: ValueError: bad value"  # one line, no traceback
    assert PSK not in stream.getvalue() and "00" * 16 not in stream.getvalue()


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_a_locust_worker_waiting_for_its_master_stops_on_sigint(group: bool) -> None:
    """Locust retries a silent master for minutes and swallows ^C meanwhile; ikecore does not."""
    proc = _start("loadtest", "--worker", "--master-host", f"127.0.0.1:{_free_port()}", "--psk", PSK)
    time.sleep(3.0)  # Locust imported, connecting
    assert proc.poll() is None
    status, seconds, _out, err = _signal(proc, signal.SIGINT, group)
    assert status == 130 and seconds < EXIT_SECONDS and "Traceback" not in err, (status, seconds, err)


@pytest.mark.parametrize("group", [True, False], ids=["group", "parent"])
def test_monitor_watch_stops_on_sigint_with_130(tmp_path: Path, group: bool) -> None:
    control = tmp_path / "control.sock"
    port = _free_port()
    serve = _start("serve", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet", "--duration", "60",
                   "--control", str(control))
    try:
        _wait_for(serve, "listening on")
        watch = _start("monitor", "--control", str(control), "main-mode", "statistics", "--watch",
                       "--interval", "5", stdout=subprocess.PIPE)
        assert watch.stdout is not None
        assert watch.stdout.readline()   # the first refresh is out: it now sleeps for 5 s
        time.sleep(0.5)
        status, seconds, _out, err = _signal(watch, signal.SIGINT, group)
        assert status == 130 and seconds < EXIT_SECONDS and "Traceback" not in err, (status, seconds, err)
    finally:
        serve.terminate()
        serve.communicate(timeout=10)
