"""The gateway's control socket, ``ikecore monitor``, the Prometheus endpoint and the SA
event stream, against a live gateway that ikecore peers negotiated with over loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from ikecore import events as ev
from ikecore.cli.main import build_parser, main
from ikecore.config import Config, Timing, config_from_flags
from ikecore.monitor.control import ControlError, request
from ikecore.engine.core import Engine
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.cli import run, start_services
from ikecore.gateway.transport import Gateway

PSK = "control-test-secret"
SEED_SA_KEYS = ["me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity", "diffie_hellman"]


class LoopGateway:
    """A gateway with its monitoring services on its own event-loop thread."""

    def __init__(self, config: Config, control: str | None, metrics: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = Engine(config)
        self.monitor = Monitor()
        self.gateway = Gateway(self.engine, monitor=self.monitor)
        self.addresses = self.call(lambda: self.gateway.listen(config.listen))
        self.services = self.call(lambda: start_services(self.gateway, control, metrics))

    def call(self, make: Callable[[], Any], timeout: float = 60.0) -> Any:
        async def run_it() -> Any:
            result = make()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run_it(), self.loop).result(timeout)

    def connect_peers(self, count: int, first: int = 1, **kwargs: Any) -> list[Any]:
        """``count`` ikecore initiators, each from its own 127.0.9.x address."""
        peers = Gateway(Engine(config_from_flags(psk=kwargs.pop("psk", PSK), listen=(), **kwargs)), monitor=Monitor())

        async def all_of() -> list[Any]:
            results = []
            for i in range(first, first + count):
                local = await peers.open((f"127.0.9.{i}", 0))
                results.append(await peers.connect(self.addresses[0], local=local, timeout=20))
            return results
        results = self.call(all_of)
        self.peers = peers
        return results

    def close(self) -> None:
        self.call(lambda: self.services.close())
        self.call(self.gateway.close)
        if getattr(self, "peers", None) is not None:
            self.call(self.peers.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _config(port: int = 0) -> Config:
    return config_from_flags(psk=PSK, listen=(("127.0.0.1", port),),
                             timing=Timing(retransmit_timeout=0.5, negotiation_timeout=10.0))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LoopGateway]:
    gateway = LoopGateway(_config(), str(tmp_path / "control.sock"), "127.0.0.1:0")
    results = gateway.connect_peers(3)
    assert all(r.ok for r in results), [r.reason for r in results]
    deadline = time.monotonic() + 5
    while gateway.monitor.counters[Statistic.IKE_QUICK_MODE] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield gateway
    gateway.close()


def _monitor(path: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(["monitor", *argv, "--control", path])
    return run(args, out), out.getvalue()


def test_control_socket_serves_every_view(live: LoopGateway, tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    assert os.stat(path).st_mode & 0o777 == 0o600
    views = request(path, {"op": "views"})["views"]
    assert set(views) == {"main-mode", "quick-mode"}
    answer = request(path, {"op": "view", "mode": "main-mode", "view": "security-associations", "all_columns": True})
    assert len(answer["rows"]) == 3
    assert answer["columns"][:8] == SEED_SA_KEYS
    assert {r["peer"] for r in answer["rows"]} == {"127.0.9.1", "127.0.9.2", "127.0.9.3"}
    truth = {sa.initiator_cookie.hex(): sa for sa in live.call(live.engine.sas)}
    for row in answer["rows"]:
        sa = truth[row["initiator_cookie"]]
        assert row["responder_cookie"] == sa.responder_cookie.hex() and row["state"] == "ESTABLISHED"
    with pytest.raises(ControlError, match="unknown column"):
        request(path, {"op": "view", "mode": "main-mode", "view": "statistics", "columns": "nope"})
    with pytest.raises(ControlError, match="unknown main-mode view"):
        request(path, {"op": "view", "mode": "main-mode", "view": "nope"})


def test_garbage_requests_are_answered_and_the_connection_survives(live: LoopGateway, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "control.sock"))
        reader = sock.makefile("rb")
        for line in (b"not json\n", b"[1,2]\n", b'{"op": "explode"}\n', b'{"op": "ping"}\n'):
            sock.sendall(line)
            answers = json.loads(reader.readline())
        assert answers == {"ok": True}


def test_ikecore_monitor_command(live: LoopGateway, tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    code, text = _monitor(path, "main-mode", "security-associations", "--format", "json")
    assert code == 0
    rows = json.loads(text)
    assert len(rows) == 3 and set(SEED_SA_KEYS + ["initiator_cookie", "responder_cookie"]) <= set(rows[0])
    code, text = _monitor(path, "main-mode", "security-associations", "--columns", "peer,+state",
                          "--sort", "peer:desc")
    lines = text.splitlines()
    assert lines[0].split() == ["Peer", "State"]
    assert [line.split()[0] for line in lines[2:]] == ["127.0.9.3", "127.0.9.2", "127.0.9.1"]
    code, text = _monitor(path, "main-mode", "statistics", "--format", "json")
    stats = json.loads(text)
    assert list(stats) == [s.key for s in Statistic]
    assert stats["ike_main_mode"] == 3 and stats["ike_quick_mode"] == 3 and stats["isadb_list_size"] == 3
    code, text = _monitor(path, "quick-mode", "security-associations", "--format", "csv")
    header, *body = text.splitlines()
    assert header.split(",")[:8] == ["me", "peer", "protocol", "encryption", "integrity", "diffie_hellman",
                                     "spi_in", "spi_out"] and len(body) == 3
    code, text = _monitor(path, "main-mode", "statistics", "--watch", "--count", "2", "--interval", "0.05")
    # a pipe gets no terminal escapes: two refreshes, each under its own header line
    assert code == 0 and "\x1b" not in text and text.count("main-mode statistics at ") == 2
    code, _text = _monitor(path, "main-mode", "security-associations", "--columns", "bogus")
    assert code == 2
    code, _text = _monitor(str(tmp_path / "nobody.sock"), "main-mode", "statistics")
    assert code == 1


def test_reads_do_not_wait_for_a_negotiation_in_progress(live: LoopGateway, tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a peer that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        async def start() -> int:
            local = await live.gateway.open(("127.0.0.1", 0))
            return live.engine.initiate(silent.getsockname(), local=local, now=live.gateway.loop.time())
        handle = live.call(start)
        live.call(live.gateway._flush)
        started = time.perf_counter()
        answer = request(str(tmp_path / "control.sock"), {"op": "view", "mode": "main-mode",
                                                          "view": "security-associations", "columns": "peer,state"})
        assert time.perf_counter() - started < 2.0  # a wait on the negotiation would last its 10 s timeout
        assert {"peer": "127.0.0.1", "state": "I_EXPECT_MM2"} in answer["rows"]
        stats = request(str(tmp_path / "control.sock"), {"op": "view", "mode": "main-mode", "view": "statistics"})
        values = {r["statistic"]: r["value"] for r in stats["rows"]}
        assert values["active_acquire"] == 1 and values["isadb_list_size"] == 4
        live.call(lambda: live.gateway.delete(handle))
    finally:
        silent.close()


def test_prometheus_endpoint_parses_with_the_official_client(live: LoopGateway) -> None:
    host, port = live.services.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    families = {f.name: f for f in parse_prometheus(text)}
    assert families["ikecore_ike_main_mode"].type == "counter"
    samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert samples["ikecore_ike_main_mode_total"] == 3
    assert samples["ikecore_acquire_total"] == 9 and samples["ikecore_get_spi_total"] == 3  # no "_total_total"
    assert samples["ikecore_ike_quick_mode_total"] == 3
    assert samples["ikecore_isadb_list_size"] == 3 and families["ikecore_isadb_list_size"].type == "gauge"
    messages = {(s.labels["exchange"], s.labels["number"], s.labels["direction"]): s.value
                for s in families["ikecore_messages"].samples}
    assert messages[("identity_protection", "1", "in")] == 3 and messages[("quick_mode", "3", "in")] == 3
    assert families["ikecore_udp_receive_queue_bytes"].type == "gauge"
    assert samples["ikecore_udp_receive_drops_total"] == 0
    hist = families["ikecore_negotiation_duration_seconds"]
    counts = {s.labels["phase"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts == {"main_mode": 3, "quick_mode": 3}
    # per-SA series are off unless asked for (tests/test_metrics_hardening.py turns them on)
    assert "ikecore_isakmp_sa_established_timestamp_seconds" not in families
    assert samples["ikecore_per_sa_series_limit"] == 0 and samples["ikecore_per_sa_series_dropped"] == 0
    request_ = urllib.request.Request(f"http://{host}:{port}/metrics",
                                      headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request_, timeout=5) as reply:
        assert "openmetrics" in reply.headers["Content-Type"]
        om = {f.name: f for f in parse_openmetrics(reply.read().decode())}
    assert om["ikecore_ike_main_mode"].type == "counter"
    assert [s.value for s in om["ikecore_ike_main_mode"].samples if s.name.endswith("_total")] == [3]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{host}:{port}/other", timeout=5)
    assert missing.value.code == 404


def test_sa_event_stream_yields_the_lifecycle(tmp_path: Path) -> None:
    gateway = LoopGateway(_config(), None)
    try:
        stream = gateway.call(lambda: gateway.gateway.sa_events())
        results = gateway.connect_peers(2)
        assert all(r.ok for r in results)
        gateway.call(lambda: [gateway.gateway.delete(sa.handle) for sa in gateway.engine.sas()])

        async def take(n: int) -> list[ev.Event]:
            got = []
            async for event in stream:
                got.append(event)
                if len(got) == n:
                    break
            return got
        events = gateway.call(lambda: asyncio.wait_for(take(12), 10))
        kinds = [type(e).__name__ for e in events]
        assert kinds.count("Phase1Started") == 2 and kinds.count("Phase1Established") == 2
        assert kinds.count("Phase2Established") == 2
        assert kinds.count("SaDeleted") == 4 and kinds.count("Phase2Started") == 2
        assert not any(isinstance(e, (ev.DatagramSent, ev.DatagramReceived)) for e in events)
        gateway.call(stream.close)
        assert gateway.call(lambda: asyncio.wait_for(take(1), 2)) == []
    finally:
        gateway.close()


def test_serve_command_end_to_end(tmp_path: Path) -> None:
    """``ikecore serve --control --metrics`` with ``ikecore connect`` peers, asked by ``ikecore monitor``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = str(tmp_path / "serve.sock")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                              "--psk", PSK, "--control", path, "--metrics", "127.0.0.1:0", "--duration", "60"],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             text=True, env=env)
    try:
        lines = []
        while not any("metrics at" in line for line in lines):
            line = serve.stderr.readline()  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line)
        metrics_url = re.search(r"(http://\S+/metrics)", "".join(lines)).group(1)  # type: ignore[union-attr]
        for i in (1, 2):
            done = subprocess.run([sys.executable, "-m", "ikecore", "connect", f"127.0.0.1:{port}", "--psk", PSK,
                                   "--local", f"127.0.8.{i}:0", "--keep", "--json"],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done.stderr
        time.sleep(0.3)
        shown = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                                "--control", path, "--format", "json"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        assert sorted(r["peer"] for r in rows) == ["127.0.8.1", "127.0.8.2"]
        with urllib.request.urlopen(metrics_url, timeout=5) as reply:
            values = {s.name: s.value for f in parse_prometheus(reply.read().decode()) for s in f.samples
                      if not s.labels}
        assert values["ikecore_ike_main_mode_total"] == 2
    finally:
        serve.terminate()
        serve.wait(15)
    assert not os.path.exists(path)  # the socket is removed on shutdown


def test_serve_rejects_a_control_path_in_use(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    path.write_text("not a socket")
    assert main(["serve", "--listen", "127.0.0.1:0", "--psk", "x", "--control", str(path), "--duration", "1"]) == 2


def test_send_failures_are_counted_by_the_transport() -> None:
    gateway = LoopGateway(_config(), None)
    try:
        async def initiate_without_a_socket() -> None:
            # No socket is bound on 127.0.0.1:9, so the transport cannot send MM1.
            gateway.engine.initiate(("127.0.0.2", 500), local=("127.0.0.1", 9), now=gateway.gateway.loop.time())
            gateway.gateway._flush()
        gateway.call(initiate_without_a_socket)
        stats = gateway.call(gateway.monitor.statistics)
        assert stats["send_failures"] == 1 and stats["receive_failures"] == 0
        assert stats["active_acquire"] == 1
    finally:
        gateway.close()


def test_one_connection_serves_many_requests(live: LoopGateway, tmp_path: Path) -> None:
    from ikecore.monitor.control import ControlClient

    before = live.services.control.requests
    with ControlClient(str(tmp_path / "control.sock")) as client:
        for _ in range(5):
            stats = client.request({"op": "view", "mode": "main-mode", "view": "statistics",
                                    "columns": "statistic,value"})
            assert {r["statistic"]: r["value"] for r in stats["rows"]}["ike_main_mode"] == 3
        with pytest.raises(ControlError, match="unknown op"):
            client.request({"op": "nope"})
        assert client.request({"op": "ping"}) == {"ok": True}
    assert live.services.control.requests == before + 7


def test_kernel_receive_queue_and_drops_are_read_from_the_sockets() -> None:
    from ikecore.monitor.exporters import udp_receive_queues

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        assert udp_receive_queues([receiver]) == (0, 0)
        for _ in range(200):  # far more than a 4 KiB buffer holds: the kernel drops the rest
            sender.sendto(b"x" * 500, receiver.getsockname())
        queued, drops = udp_receive_queues([receiver])
        assert queued > 0 and drops > 0
        while True:  # drain: the queue empties, the drop count stays
            receiver.setblocking(False)
            try:
                receiver.recv(600)
            except BlockingIOError:
                break
        assert udp_receive_queues([receiver]) == (0, drops)


def test_a_first_listing_of_many_sas_yields_to_the_event_loop(tmp_path: Path) -> None:
    """Every view is built and sent in slices with the loop turning in between (negotiations
    go on), and the streamed rows are those of ``Views.query``, sorted alike."""
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.hostinfo import HostConfig
    from ikecore.monitor.views import VIEWS, Views
    from tests.helpers import RESPONDER, Link

    link = Link()
    for i in range(40):
        link.initiator.initiate(RESPONDER, local=(f"127.0.4.{i + 1}", 500), now=link.now)
    link.pump(rounds=100)
    views = Views(link.responder, Monitor(), clock=lambda: link.now, wall=lambda: 1_800_000_000.0,
                  host=HostConfig())  # a fixed wall clock: "created" cannot move between two reads

    async def scenario(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        server = ControlServer(views)
        server.SLICE = 4
        await server.start(str(tmp_path / "warm.sock"))
        ticks = 0
        done = False

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            if not done:
                asyncio.get_running_loop().call_soon(tick)
        asyncio.get_running_loop().call_soon(tick)
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "warm.sock"))
        writer.write(json.dumps(request).encode() + b"\n")
        answer = json.loads(await reader.readline())
        done = True
        writer.close()
        server.close()
        return ticks, answer
    sliced = {("main-mode", "security-associations"), ("main-mode", "specific-filters"),
              ("quick-mode", "specific-filters"), ("quick-mode", "security-associations")}
    for mode, names in VIEWS.items():
        for view in names:
            for sort in (None, "name:desc" if "filters" in view else None, "peer:desc" if "associations" in view
                         else None):
                ticks, answer = asyncio.run(scenario({"op": "view", "mode": mode, "view": view, "sort": sort,
                                                      "all_columns": True}))
                expected = views.query(mode, view, sort=sort, all_columns=True)
                assert answer["ok"] and answer["rows"] == expected["rows"], (mode, view, sort)
                assert answer["columns"] == expected["columns"]
                if (mode, view) in sliced:
                    assert len(answer["rows"]) >= 40
                    assert ticks >= 10, (mode, view)  # at least one turn of the loop per slice of 4 SAs
    ticks, answer = asyncio.run(scenario({"op": "view", "mode": "main-mode", "view": "security-associations",
                                          "sort": "peer:sideways"}))
    assert answer == {"ok": False, "error": "sort order 'sideways' must be asc or desc"}


def test_monitor_command_imports_no_engine_crypto_or_asyncio(live: LoopGateway, tmp_path: Path) -> None:
    """``ikecore monitor`` starts without the rest of the command line (interpreter start is
    most of a one-shot listing) and prints the same rows as the full command line."""
    path = str(tmp_path / "control.sock")
    probe = ("import sys, io, contextlib\n"
             "from ikecore.cli.entry import main\n"
             "out = io.TextIOWrapper(io.BytesIO(), encoding='utf-8')\n"
             "with contextlib.redirect_stdout(out):\n"
             "    code = main(['monitor', 'main-mode', 'security-associations', '--control', sys.argv[1],"
             " '--format', 'json'])\n"
             "out.flush()\n"
             "print(code, sorted(m for m in sys.modules if m.startswith(('ikecore', 'asyncio', 'cryptography',"
             " 'prometheus'))))\n"
             "print(out.buffer.getvalue().decode())\n")
    done = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, listing = done.stdout.split("\n", 1)
    code, modules = status.split(" ", 1)
    assert code == "0"
    loaded = set(eval(modules))  # noqa: S307 - our own probe's printed list
    assert {"ikecore.monitor.cli", "ikecore.monitor.control_client", "ikecore.monitor.text"} <= loaded
    assert not loaded & {"asyncio", "ikecore.monitor.views", "ikecore.monitor.control", "ikecore.cli.main",
                         "ikecore.monitor.counters", "ikecore.config", "ikecore.keymat", "cryptography"}
    heavy_wings = ("ikecore.protocol", "ikecore.engine", "ikecore.gateway", "ikecore.loadtest")
    assert not [m for m in loaded if m.startswith(heavy_wings)]  # no engine, sockets or generator
    _code, full = _monitor(path, "main-mode", "security-associations", "--format", "json")
    assert json.loads(listing) == json.loads(full) and len(json.loads(full)) == 3
    shown = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                            "--control", path, "--format", "json", "--columns", "peer,state", "--sort", "peer"],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [{"peer": f"127.0.9.{i}", "state": "ESTABLISHED"} for i in (1, 2, 3)]
    bad = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                          "--control", path, "--columns", "bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown column 'bogus'" in bad.stderr


def test_rows_are_cut_out_of_an_answer_only_when_it_is_one() -> None:
    from ikecore.monitor.control_client import ControlClient

    tricky = [{"peer_id": 'x,"rows":[1]}', "n": 1}]
    line = b'{"ok":true,"time":1.5,"mode":"main-mode","view":"security-associations","columns":["peer_id","n"],' \
           b'"rows":' + json.dumps(tricky, separators=(",", ":")).encode() + b"}"
    assert json.loads(ControlClient.rows_json(line)) == tricky  # type: ignore[arg-type]
    assert ControlClient.rows_json(b'{"ok":false,"error":"no","rows":[]}') is None
    assert ControlClient.rows_json(b'{"ok":true,"rows":[1],"more":2}') is None
    assert ControlClient.rows_json(b'{"ok":true,"x":[,"rows":[1]}') is None  # the head is no JSON
    assert ControlClient.rows_json(b'{"ok":true,"rows":[]}') is None  # a view answer names its columns


def test_a_scrape_reads_on_the_loop_and_formats_off_it(live: LoopGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector reads the gateway on its event loop; the text is formatted on another
    thread (most of a scrape with many per-SA series), so the loop keeps turning."""
    from ikecore.monitor import exporters

    threads: dict[str, int] = {}
    real_collect = exporters.IkecoreCollector.collect
    real_choose = exporters.choose_encoder

    def collect(self: Any) -> Any:
        threads["collect"] = threading.get_ident()
        return real_collect(self)

    def choose(accept: str) -> Any:
        encoder, ctype = real_choose(accept)

        def encode(registry: Any) -> bytes:
            threads["format"] = threading.get_ident()
            return encoder(registry)  # type: ignore[no-any-return]
        return encode, ctype
    monkeypatch.setattr(exporters.IkecoreCollector, "collect", collect)
    monkeypatch.setattr(exporters, "choose_encoder", choose)
    host, port = live.services.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values = {s.name: s.value for f in parse_prometheus(text) for s in f.samples if not s.labels}
    assert values["ikecore_ike_main_mode_total"] == 3
    assert threads["collect"] == live.thread.ident != threads["format"]
