"""One representation per field: the same SA through ``connect --json``, ``monitor`` in
JSON and CSV and the ``/metrics`` labels shows the same values (ISO 8601 UTC times,
lower-case hex cookies and SPIs, vendor IDs as a JSON list or ``;``-joined, ``true``/``false``),
and ``monitor --watch`` writes terminal escapes only to a terminal, in table format."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ikecore.monitor.formats import hex_text, iso_utc, json_value, text_cell
from ikecore.monitor.text import render

PSK = "formats-secret"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
HEX = re.compile(r"^[0-9a-f]+$")
#: Vendor IDs ikecore sends (RFC 3947: MD5 of "RFC 3947"; RFC 3706 DPD), by the names
#: ``ikecore.wire`` gives them.
RFC3947_NAT_T, DPD = "RFC 3947 NAT-T", "Dead Peer Detection v1.0"


# --- the rules themselves -------------------------------------------------------------------


def test_iso_utc_is_iso_8601_utc_to_the_second() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    instant = datetime.datetime(2026, 12, 7, 21, 30, 0, tzinfo=datetime.timezone.utc)
    assert iso_utc(instant.timestamp() + 0.9) == "2026-12-07T21:30:00Z"
    assert datetime.datetime.fromisoformat(iso_utc(instant.timestamp()).replace("Z", "+00:00")) == instant


def test_cells_and_json_values() -> None:
    assert [text_cell(v) for v in (True, False, None, ["a b", "c"], b"\x00\xab", 7, "x")] == \
        ["true", "false", "", "a b;c", "00ab", "7", "x"]
    assert hex_text(bytes.fromhex("DEADBEEF")) == "deadbeef"
    assert json_value({"spi": b"\x01\x02", "ids": ("a", "b"), "ok": True, "n": None}) == \
        {"spi": "0102", "ids": ["a", "b"], "ok": True, "n": None}


def test_csv_writes_booleans_and_lists_as_the_rules_say() -> None:
    result = {"view": "security-associations", "columns": ["dpd", "encapsulated", "vendor_ids", "lifetime_left"],
              "rows": [{"dpd": True, "encapsulated": False, "vendor_ids": ["RFC 3947 NAT-T", "XAUTH"],
                        "lifetime_left": None}]}
    (row,) = list(csv.DictReader(io.StringIO(render(result, "csv"))))
    assert row == {"dpd": "true", "encapsulated": "false", "vendor_ids": "RFC 3947 NAT-T;XAUTH", "lifetime_left": ""}
    assert json.loads(render(result, "json")) == result["rows"]
    table = render(result, "table")
    assert "true" in table and "True" not in table and "RFC 3947 NAT-T;XAUTH" in table


# --- one SA through every output ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ikecore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int, control: str, metrics: str) -> None:
        self.process, self.port, self.control, self.metrics = process, port, control, metrics

    def monitor(self, *args: str) -> str:
        done = _ikecore("monitor", *args, "--control", self.control)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port, control = _free_port(), str(tmp_path / "control.sock")
    process = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                "--psk", PSK, "--control", control, "--metrics", "127.0.0.1:0",
                                "--metrics-per-sa", "10", "--metrics-cache", "0", "--quiet", "--duration", "120"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("metrics at" in line for line in lines) and time.monotonic() < deadline:
            line = process.stderr.readline()  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line)
        url = next(line for line in lines if "metrics at" in line).split("metrics at ", 1)[1].strip()
        yield Served(process, port, control, url)
    finally:
        process.terminate()
        process.wait(15)


def _iso_seconds(text: str) -> float:
    assert ISO.match(text), text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_one_sa_shows_the_same_values_in_every_output(served: Served) -> None:
    before = time.time()
    done = _ikecore("connect", f"127.0.0.1:{served.port}", "--local", "127.0.31.1", "--psk", PSK, "--json", "--keep")
    after = time.time()
    assert done.returncode == 0, done.stderr
    connect = json.loads(done.stdout)
    mine, (my_pair,) = connect["main_mode"], connect["quick_mode"]

    (mm,) = json.loads(served.monitor("main-mode", "security-associations", "--format", "json"))
    (qm,) = json.loads(served.monitor("quick-mode", "security-associations", "--format", "json"))
    (mm_csv,) = list(csv.DictReader(io.StringIO(served.monitor("main-mode", "security-associations",
                                                               "--format", "csv", "--columns", "all"))))
    (qm_csv,) = list(csv.DictReader(io.StringIO(served.monitor("quick-mode", "security-associations",
                                                               "--format", "csv", "--columns", "all"))))

    # cookies: lower-case hex, 8 bytes, the same on both ends and in every format
    for key in ("initiator_cookie", "responder_cookie"):
        assert HEX.match(mine[key]) and len(mine[key]) == 16
        assert mine[key] == mm[key] == mm_csv[key] == my_pair[key] == qm[key] == qm_csv[key]
    # SPIs: lower-case hex, 4 bytes; our inbound SPI is the gateway's outbound one
    assert HEX.match(my_pair["spi_in"]) and len(my_pair["spi_in"]) == 8
    assert my_pair["spi_in"] == qm["spi_out"] == qm_csv["spi_out"]
    assert my_pair["spi_out"] == qm["spi_in"] == qm_csv["spi_in"]
    # created: ISO 8601 UTC of the wall clock, within the run, the same instant on both ends
    for text in (mine["created"], mm["created"], mm_csv["created"], my_pair["created"], qm["created"]):
        assert int(before) <= _iso_seconds(text) <= after + 1
    assert mm["created"] == mm_csv["created"]
    assert abs(_iso_seconds(mine["created"]) - _iso_seconds(mm["created"])) <= 1
    # and beside it its age, a whole number of seconds
    assert isinstance(mine["age_seconds"], int) and isinstance(mm["age_seconds"], int)
    assert 0 <= mine["age_seconds"] <= after - before + 1 and int(mm_csv["age_seconds"]) >= mm["age_seconds"] - 1
    # vendor IDs: a JSON list in JSON (what the other end sent), ';'-joined in CSV
    assert isinstance(mine["vendor_ids"], list) and isinstance(mm["vendor_ids"], list)
    assert {RFC3947_NAT_T, DPD} <= set(mine["vendor_ids"]) and {RFC3947_NAT_T, DPD} <= set(mm["vendor_ids"])
    assert mm_csv["vendor_ids"].split(";") == mm["vendor_ids"]
    # booleans: JSON's true/false, and the same words in CSV
    for key in ("encapsulated", "dpd"):
        assert isinstance(mm[key], bool) and isinstance(mine[key], bool)
        assert mm_csv[key] == ("true" if mm[key] else "false")
    assert mine["dpd"] is mm["dpd"] is True and mine["encapsulated"] is mm["encapsulated"] is False

    # the /metrics labels: the views' column names and values
    with urllib.request.urlopen(served.metrics, timeout=10) as answer:
        families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
    established = [s for f in families.values() for s in f.samples
                   if s.name == "ikecore_isakmp_sa_established_timestamp_seconds"]
    (sample,) = established
    assert {key: sample.labels[key] for key in ("initiator_cookie", "responder_cookie", "me", "peer", "peer_id")} == \
        {key: mm[key] for key in ("initiator_cookie", "responder_cookie", "me", "peer", "peer_id")}
    assert abs(sample.value - _iso_seconds(mm["created"])) < 1.0
    (pair,) = [s for f in families.values() for s in f.samples if s.name == "ikecore_ipsec_sa_expiry_timestamp_seconds"]
    assert (pair.labels["spi_in"], pair.labels["spi_out"]) == (qm["spi_in"], qm["spi_out"])


def _watch(served: Served, fmt: str, stdout: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                             "--control", served.control, "--watch", "--count", "2", "--interval", "0.1",
                             "--format", fmt], stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def test_watch_writes_escapes_only_to_a_terminal_in_table_format(served: Served) -> None:
    done = _ikecore("connect", f"127.0.0.1:{served.port}", "--local", "127.0.31.2", "--psk", PSK, "--keep")
    assert done.returncode == 0, done.stderr
    # JSON into a pipe: JSON Lines, one document per refresh, nothing else
    piped = _watch(served, "json", subprocess.PIPE)
    out, err = piped.communicate(timeout=60)
    assert piped.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 2 and b"\x1b" not in out
    assert [[row["peer"] for row in json.loads(line)] for line in lines] == [["127.0.31.2"], ["127.0.31.2"]]
    # a table into a pipe: the text alone
    piped = _watch(served, "table", subprocess.PIPE)
    out, err = piped.communicate(timeout=60)
    assert piped.returncode == 0 and b"\x1b" not in out and out.count(b"security-associations at ") == 2, err
    # a table on a terminal: the screen is cleared before each refresh
    for fmt, escapes in (("table", 2), ("json", 0)):
        leader, follower = pty.openpty()
        try:
            shown = _watch(served, fmt, follower)
            os.close(follower)
            received = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], 1.0)
                if ready:
                    try:
                        chunk = os.read(leader, 65536)
                    except OSError:  # the terminal closed: the command ended
                        break
                    if not chunk:
                        break
                    received += chunk
                elif shown.poll() is not None:
                    break
            assert shown.wait(30) == 0
        finally:
            os.close(leader)
        assert received.count(b"\x1b[2J") == escapes, (fmt, received[:200])
