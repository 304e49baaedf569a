"""``/metrics`` with bounds, against live gateways that ikecore peers negotiated with over
loopback: per-SA series off by default and capped (and the cap reported) when asked; one
exposition per cache interval whatever the scrapers; a connection cap and a request
pace; TLS and basic auth from a Prometheus exporter-toolkit web config, with real
clients (curl, Python's ssl, a real Prometheus); one ``/metrics`` merged from several
gateways' control sockets, as the parent of a gateway's workers serves it."""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import logging
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from ikecore.cli.main import main
from ikecore.config import Config, MetricsSettings, Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.gateway.transport import Gateway
from ikecore.monitor import exporters, fleet_metrics
from ikecore.monitor.cli import start_services
from ikecore.monitor.control_client import ControlClient
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.exporters import MetricsServer
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from tests import pki

PSK = "metrics-hardening-secret"
PER_SA = exporters.PER_SA_FAMILIES


class LoopThread:
    """An event loop on its own thread; ``call`` runs a function or coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, make: Callable[[], Any], timeout: float = 60.0) -> Any:
        async def run_it() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run_it(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Live(LoopThread):
    """A gateway with its monitoring services (``start_services``) and ``peers`` ikecore
    peers, each from its own 127.0.x.y address, established with Quick Mode."""

    def __init__(self, peers: int, *, control: str | None = None, metrics: str | None = "127.0.0.1:0",
                 options: argparse.Namespace | None = None, config: Config | None = None, net: int = 9) -> None:
        super().__init__()
        config = config or _config()
        self.engine = Engine(config)
        self.monitor = Monitor()
        self.gateway = Gateway(self.engine, monitor=self.monitor)
        self.addresses = self.call(lambda: self.gateway.listen(config.listen))
        self.services = self.call(lambda: start_services(self.gateway, control, metrics, options))
        self.peers = Gateway(Engine(config_from_flags(psk=PSK, listen=())), monitor=Monitor())

        async def negotiate() -> list[Any]:
            results = []
            for i in range(1, peers + 1):
                local = await self.peers.open((f"127.0.{net}.{i}", 0))
                results.append(await self.peers.connect(self.addresses[0], local=local, timeout=20))
            return results
        results = self.call(negotiate)
        assert all(r.ok for r in results), [r.reason for r in results]
        deadline = time.monotonic() + 5
        while self.monitor.counters[Statistic.IKE_QUICK_MODE] < peers and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def url(self) -> str:
        host, port = self.services.metrics_address
        return f"http://{host}:{port}/metrics"

    def sas(self) -> list[Any]:
        return list(self.call(self.engine.sas))

    def close(self) -> None:  # type: ignore[override]
        self.call(self.services.close)
        self.call(self.gateway.close)
        self.call(self.peers.close)
        super().close()


def _config(**changes: Any) -> Config:
    config = config_from_flags(psk=PSK, listen=(("127.0.0.1", 0),),
                               timing=Timing(retransmit_timeout=0.5, negotiation_timeout=10.0))
    if changes:
        config = Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, **changes})
    return config


def _options(**flags: Any) -> argparse.Namespace:
    return argparse.Namespace(**{f"metrics_{key}": value for key, value in flags.items()})


def _scrape(url: str | urllib.request.Request, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10, **kwargs) as reply:
        text = reply.read().decode()
    return text, {f.name: f for f in parse_prometheus(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(s.value for f in families.values() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def three() -> Iterator[Live]:
    live = Live(3)
    yield live
    live.close()


# -- per-SA series -------------------------------------------------------------------------

def test_per_sa_series_are_off_by_default(three: Live, tmp_path: Path) -> None:
    """No series per SA, and nothing that names a peer's SA (cookies, SPIs) in the text."""
    text, families = _scrape(three.url)
    assert not set(PER_SA) & set(families)
    assert _value(families, "ikecore_ike_main_mode_total") == 3
    assert _value(families, "ikecore_per_sa_series_limit") == 0
    assert _value(families, "ikecore_per_sa_series_dropped") == 0
    for sa in three.sas():
        assert sa.initiator_cookie.hex() not in text and sa.responder_cookie.hex() not in text
        for ipsec in sa.ipsec_sas:
            assert ipsec.spi_in.hex() not in text


def test_per_sa_series_are_capped_and_the_cap_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    live = Live(3, options=_options(per_sa=2, cache=0.0))
    try:
        caplog.set_level(logging.WARNING, logger="ikecore.gateway.faults")
        for _ in range(3):
            _text, families = _scrape(live.url)
            time.sleep(0.3)
        assert live.services.metrics.builds == 3
        established = families[PER_SA[0]].samples
        assert len(established) == 2
        kept = {(s.labels["initiator_cookie"], s.labels["responder_cookie"]) for s in established}
        sas = {(sa.initiator_cookie.hex(), sa.responder_cookie.hex()): sa for sa in live.sas()}
        assert kept < set(sas)
        assert {s.labels["peer"] for s in established} == {sas[k].remote[0] for k in kept}
        ipsec = families[PER_SA[2]].samples
        assert len(ipsec) == 2 and {(s.labels["initiator_cookie"], s.labels["responder_cookie"]) for s in ipsec} == kept
        assert {s.labels["spi_in"] for s in ipsec} == {i.spi_in.hex() for k in kept for i in sas[k].ipsec_sas}
        assert _value(families, "ikecore_per_sa_series_limit") == 2
        assert _value(families, "ikecore_per_sa_series_dropped") == 1
        # said in a log line, rate-limited: one line for three builds
        lines = [r.getMessage() for r in caplog.records if "per_sa_series_capped" in r.getMessage()]
        assert len(lines) == 1 and "3 established SAs, per-SA series for 2" in lines[0], lines
        assert "--metrics-per-sa 2" in lines[0]
    finally:
        live.close()


def test_the_per_sa_cap_is_a_config_key_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = Live(2, config=_config(metrics=MetricsSettings(per_sa=5)))
    try:
        _text, families = _scrape(live.url)
        assert len(families[PER_SA[0]].samples) == 2 and _value(families, "ikecore_per_sa_series_dropped") == 0
    finally:
        live.close()
    config = tmp_path / "gw.toml"
    config.write_text('[metrics]\nper_sa = "many"\n')
    config.chmod(0o600)
    assert main(["serve", "--config", str(config), "--listen", "127.0.0.1:0", "--duration", "0.1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ikecore serve: metrics.per_sa: must be int, not str"


@pytest.mark.parametrize("flag, value, field", [("--metrics-per-sa", "-1", "--metrics-per-sa"),
                                                ("--metrics-cache", "-2", "--metrics-cache"),
                                                ("--metrics-connections", "0", "--metrics-connections")])
def test_bad_metrics_flags_are_one_line_errors(flag: str, value: str, field: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--listen", "127.0.0.1:0", "--psk", PSK, "--metrics", "127.0.0.1:0", f"{flag}={value}",
                 "--duration", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"ikecore serve: {field}:"), err
    assert "Traceback" not in "\n".join(err)


# -- bounded cost ---------------------------------------------------------------------------

def test_one_exposition_per_interval_whatever_the_scrapers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight scrapers as fast as they can for 2.5 s: the gateway is read at most once per
    second (the cache), and every scraper is answered."""
    collected: list[float] = []
    real_collect = exporters.IkecoreCollector.collect

    def collect(self: Any) -> Any:
        collected.append(time.monotonic())
        return real_collect(self)
    monkeypatch.setattr(exporters.IkecoreCollector, "collect", collect)
    live = Live(1)
    try:
        answers: list[float] = []
        failures: list[str] = []
        stop_at = time.monotonic() + 2.5

        def scraper() -> None:
            while time.monotonic() < stop_at:
                try:
                    _text, families = _scrape(live.url)
                    answers.append(_value(families, "ikecore_ike_main_mode_total"))
                except OSError as exc:
                    failures.append(repr(exc))
        threads = [threading.Thread(target=scraper) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures and len(answers) >= 16 and set(answers) == {1.0}
        assert 1 <= len(collected) <= 4, len(collected)  # 2.5 s at one build per second
        assert all(b - a >= 0.99 for a, b in zip(collected, collected[1:]))
        assert live.services.metrics.scrapes == len(answers) and live.services.metrics.builds == len(collected)
    finally:
        live.close()


def test_scrapers_waiting_for_a_build_share_it() -> None:
    """Five scrapers arrive while the exposition is being built: one build serves them all."""
    calls: list[int] = []

    async def slow_source() -> list[Any]:
        calls.append(1)
        await asyncio.sleep(0.5)
        return [GaugeMetricFamily("ikecore_probe", "a probe", value=len(calls))]
    loop = LoopThread()
    server = MetricsServer(slow_source, cache_seconds=0.0)
    try:
        host, port = loop.call(lambda: server.start("127.0.0.1", 0))
        results: list[float] = []
        threads = [threading.Thread(target=lambda: results.append(
            _value(_scrape(f"http://{host}:{port}/metrics")[1], "ikecore_probe"))) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [1.0] * 5 and len(calls) == 1
    finally:
        loop.call(server.close)
        loop.close()


def test_a_slow_build_spaces_the_next_one_out() -> None:
    """A build that costs 60 ms of processor time serves for at least 0.6 s, even with no
    cache asked for: building never takes more than a tenth of the gateway's time."""
    class Busy:
        builds = 0

        def collect(self) -> list[Any]:
            Busy.builds += 1
            until = time.thread_time() + 0.06
            while time.thread_time() < until:
                pass
            return [GaugeMetricFamily("ikecore_probe", "a probe", value=Busy.builds)]
    loop = LoopThread()
    server = MetricsServer(Busy(), cache_seconds=0.0, max_requests=1000.0)
    try:
        host, port = loop.call(lambda: server.start("127.0.0.1", 0))
        url = f"http://{host}:{port}/metrics"
        seen = [_value(_scrape(url)[1], "ikecore_probe")]
        assert server.build_seconds >= 0.05
        stop_at = time.monotonic() + 1.5
        while time.monotonic() < stop_at:
            seen.append(_value(_scrape(url)[1], "ikecore_probe"))
        assert len(seen) > 10 and Busy.builds <= 3 and seen[0] == 1.0, (len(seen), Busy.builds)
    finally:
        loop.call(server.close)
        loop.close()


def _registry_server(**kwargs: Any) -> tuple[LoopThread, MetricsServer, tuple[str, int]]:
    monitor = Monitor()
    loop = LoopThread()
    server = MetricsServer(exporters.make_registry(exporters.IkecoreCollector(monitor)), **kwargs)
    address = loop.call(lambda: server.start("127.0.0.1", 0))
    return loop, server, address


def test_connections_past_the_cap_wait_until_one_closes() -> None:
    loop, server, address = _registry_server(max_connections=2)
    idle = [socket.create_connection(address, timeout=5) for _ in range(2)]
    third = socket.create_connection(address, timeout=5)  # the kernel's backlog takes it
    try:
        time.sleep(0.2)
        third.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert select.select([third], [], [], 1.0)[0] == []  # not served while two are open
        assert server.connections == 2 and server.accepted == 2
        idle[0].close()
        assert select.select([third], [], [], 5.0)[0] == [third]
        head = third.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK") and server.peak_connections == 2
    finally:
        for sock in (*idle, third):
            sock.close()
        loop.call(server.close)
        loop.close()


def test_requests_are_paced_whatever_the_connections() -> None:
    """Four keep-alive clients as fast as they can for 1.5 s against 20 answers a second."""
    loop, server, (host, port) = _registry_server(max_requests=20.0)
    answered: list[int] = []
    stop_at = time.monotonic() + 1.5

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        while time.monotonic() < stop_at:
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            reply.read()
            answered.append(reply.status)
        conn.close()
    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert set(answered) == {200}
        assert 20 <= len(answered) <= 1.5 * 20 + 6, len(answered)  # keep-alive kept: few connections
        assert server.accepted == 4
    finally:
        loop.call(server.close)
        loop.close()


# -- TLS and basic auth ---------------------------------------------------------------------

def _web_config(directory: Path, users: dict[str, str] | None = None, tls: bool = True) -> tuple[Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a web config using them (relative paths)."""
    ca = pki.make_ca()
    pki.Issued(ca.certificate, ca.key).write(directory, "ca")
    pki.issue(ca, "127.0.0.1", addresses=("127.0.0.1",), dns=("localhost",)).write(directory, "server")
    (directory / "server.key").chmod(0o600)
    lines = []
    if tls:
        lines += ["tls_server_config:", "  cert_file: server.pem", "  key_file: server.key"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {name}: {bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"
                  for name, password in users.items()]
    path = directory / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path, directory / "ca.pem"


def _curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)
    body, _, code = done.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def test_tls_and_basic_auth_with_real_clients(tmp_path: Path) -> None:
    web, ca = _web_config(tmp_path, {"prometheus": "scrape-me", "grafana": "other"})
    live = Live(1, options=_options(web_config=str(web)))
    try:
        host, port = live.services.metrics_address
        url = f"https://{host}:{port}/metrics"
        code, body = _curl("--cacert", str(ca), "-u", "prometheus:scrape-me", url)
        assert code == 200 and "ikecore_ike_main_mode_total 1.0" in body
        for _ in range(4):  # the same credentials again: no bcrypt (remembered, HMAC compared)
            assert _curl("--cacert", str(ca), "-u", "prometheus:scrape-me", url)[0] == 200
        auth = live.services.metrics.auth
        assert auth.bcrypt_checks == 1
        assert _curl("--cacert", str(ca), url)[0] == 401
        for _ in range(3):
            assert _curl("--cacert", str(ca), "-u", "prometheus:wrong", url)[0] == 401
        assert _curl("--cacert", str(ca), "-u", "nobody:scrape-me", url)[0] == 401
        assert auth.bcrypt_checks == 3  # one per new (user, password); unknown users cost one too
        assert _curl("--cacert", str(ca), "-u", "grafana:other", url)[0] == 200
        assert _curl("-u", "prometheus:scrape-me", url)[0] == 0  # an untrusted certificate: refused by curl
        assert _curl("-u", "prometheus:scrape-me", f"http://{host}:{port}/metrics")[0] != 200  # no plain HTTP
        # Python's own TLS client, verifying the certificate against the CA
        context = ssl.create_default_context(cafile=str(ca))
        token = base64.b64encode(b"prometheus:scrape-me").decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        _text, families = _scrape(request, context=context)
        assert _value(families, "ikecore_ike_quick_mode_total") == 1
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10, context=context)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
    finally:
        live.close()


@pytest.mark.interop("prometheus")
def test_a_real_prometheus_scrapes_through_tls_and_basic_auth(tmp_path: Path) -> None:
    from interop.prometheus import Prometheus

    web, ca = _web_config(tmp_path, {"prometheus": "scrape-me"})
    live = Live(2, options=_options(web_config=str(web)))
    try:
        host, port = live.services.metrics_address
        base = {"scheme": "https", "static_configs": [{"targets": [f"{host}:{port}"]}],
                "tls_config": {"ca_file": str(ca), "server_name": "127.0.0.1"}}
        jobs = [{**base, "job_name": "good", "basic_auth": {"username": "prometheus", "password": "scrape-me"}},
                {**base, "job_name": "wrong", "basic_auth": {"username": "prometheus", "password": "guess"}},
                {**base, "job_name": "anonymous"}]
        with Prometheus(tmp_path / "prom", jobs) as prometheus:
            assert prometheus.wait_for('up{job="good"}', lambda v: v == 1.0) == 1.0
            assert prometheus.wait_for('ikecore_ike_main_mode_total{job="good"}', lambda v: v == 2.0) == 2.0
            assert prometheus.wait_for('up{job="wrong"}', lambda v: v == 0.0) == 0.0
            assert prometheus.wait_for('up{job="anonymous"}', lambda v: v == 0.0) == 0.0
            errors = {t["labels"]["job"]: t["lastError"] for t in prometheus.targets()}
            assert "401" in errors["wrong"] and "401" in errors["anonymous"] and errors["good"] == ""
    finally:
        live.close()


BAD_CONFIGS = [
    ("tls_config:\n  cert_file: server.pem\n", "tls_config", "unknown key"),
    ("tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n", "tls_server_config.cert_file",
     "cannot read"),
    ("tls_server_config:\n  cert_file: server.pem\n", "tls_server_config.key_file", "is required"),
    ("tls_server_config:\n  cert_file: server.pem\n  key_file: other.key\n", "tls_server_config.key_file",
     "is not the PEM private key"),
    ("tls_server_config:\n  cert_file: server.pem\n  key_file: open.key\n", "tls_server_config.key_file",
     "chmod 600"),
    ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: SSL3\n",
     "tls_server_config.min_version", "TLS12"),
    ("basic_auth_users:\n  prometheus: scrape-me\n", "basic_auth_users.prometheus", "bcrypt hash"),
    ("basic_auth_users: [prometheus]\n", "basic_auth_users", "mapping"),
    ("tls_server_config: [\n", "", "not valid YAML at line"),
]


@pytest.mark.parametrize("text, key, problem", BAD_CONFIGS)
def test_a_bad_web_config_is_one_line_naming_the_file_and_the_key(text: str, key: str, problem: str,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _web_config(tmp_path)
    other = pki.issue(pki.make_ca(), "other")
    other.write(tmp_path, "other")
    (tmp_path / "other.key").chmod(0o600)
    (tmp_path / "open.key").write_bytes((tmp_path / "server.key").read_bytes())
    (tmp_path / "open.key").chmod(0o644)
    path = tmp_path / "bad.yml"
    path.write_text(text)
    code = main(["serve", "--listen", "127.0.0.1:0", "--psk", PSK, "--metrics", "127.0.0.1:0",
                 "--metrics-web-config", str(path), "--duration", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith(f"ikecore serve: --metrics-web-config {path}") or \
        err[-1].startswith("ikecore serve: --metrics-web-config: ") and str(path) in err[-1], err
    assert f"{key}:" in err[-1] and problem in err[-1], err
    assert "Traceback" not in "\n".join(err)


# -- one /metrics from several gateways -----------------------------------------------------

class ControlFanout:
    """What the parent of a gateway's workers offers the metrics: ``gather`` asks every
    control socket (here: in-process gateways' sockets) and gives (index, answer or None)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    async def gather(self, payload: dict[str, Any]) -> list[tuple[int, dict[str, Any] | None]]:
        def ask(path: str) -> dict[str, Any] | None:
            try:
                with ControlClient(path) as client:
                    return client.request(payload)
            except Exception:  # a worker that does not answer
                return None
        loop = asyncio.get_running_loop()
        answers = await asyncio.gather(*(loop.run_in_executor(None, ask, p) for p in self.paths))
        return list(enumerate(answers))


def test_one_metrics_for_several_gateways_sums_them(tmp_path: Path) -> None:
    """Two gateways (3 and 2 peers) merged: counters and gauges summed, the start time the
    earliest, the per-SA cap held for the whole; a gateway that stops answering keeps its
    counters (not its gauges); one started again in its place adds to them (no reset)."""
    paths = [str(tmp_path / "w0.sock"), str(tmp_path / "w1.sock")]
    flags = _options(per_sa=3, cache=0.0)
    first = Live(3, control=paths[0], metrics=None, options=flags, net=11)
    second = Live(2, control=paths[1], metrics=None, options=flags, net=12)
    third: Live | None = None
    parent = LoopThread()
    served: Any = None
    try:
        args = argparse.Namespace(metrics="127.0.0.1:0", config=None, metrics_per_sa=3, metrics_cache=0.0)
        served = parent.call(lambda: fleet_metrics.start(ControlFanout(paths), args))
        url = f"http://{served.address[0]}:{served.address[1]}/metrics"
        own = [ControlClient(p).request({"op": "metrics"}) for p in paths]
        _text, fleet = _scrape(url)
        assert _value(fleet, "ikecore_ike_main_mode_total") == 5
        assert _value(fleet, "ikecore_ike_quick_mode_total") == 5
        assert _value(fleet, "ikecore_isadb_list_size") == 5 and _value(fleet, "ikecore_ipsec_sas") == 5
        assert _value(fleet, "ikecore_messages_total", exchange="identity_protection", number="1",
                      direction="in") == 5
        assert _value(fleet, "ikecore_negotiation_duration_seconds_count", phase="main_mode") == 5
        assert _value(fleet, "ikecore_half_open_limit") == 2 * 4096
        assert _value(fleet, "ikecore_start_time_seconds") == min(a["started"] for a in own)
        assert _value(fleet, "ikecore_workers") == 2
        assert _value(fleet, "ikecore_worker_up", worker="0") == 1 == _value(fleet, "ikecore_worker_up", worker="1")
        kept = fleet[PER_SA[0]].samples
        assert len(kept) == 3 and _value(fleet, "ikecore_per_sa_series_limit") == 3
        assert _value(fleet, "ikecore_per_sa_series_dropped") == 2
        cookies = {(s.labels["initiator_cookie"], s.labels["responder_cookie"]) for s in kept}
        every = {(sa.initiator_cookie.hex(), sa.responder_cookie.hex()) for sa in first.sas() + second.sas()}
        assert cookies < every and len({s.labels["peer"] for s in kept}) == 3
        assert {(s.labels["initiator_cookie"], s.labels["responder_cookie"]) for s in fleet[PER_SA[2]].samples} \
            == cookies
        # the second gateway stops answering: counters stay, gauges go, worker 1 is down
        second.call(second.services.close)
        _text, fleet = _scrape(url)
        assert _value(fleet, "ikecore_ike_main_mode_total") == 5 and _value(fleet, "ikecore_isadb_list_size") == 3
        assert _value(fleet, "ikecore_worker_up", worker="1") == 0
        # another process in its place (a new start time): its counts add to the old ones
        third = Live(1, control=paths[1], metrics=None, options=flags, net=13)
        _text, fleet = _scrape(url)
        assert _value(fleet, "ikecore_ike_main_mode_total") == 6 and _value(fleet, "ikecore_isadb_list_size") == 4
        assert _value(fleet, "ikecore_worker_up", worker="1") == 1 and served.merger.restarts_seen == 1
    finally:
        if served is not None:
            parent.call(served.close)
        parent.close()
        for live in (first, second, third):
            if live is not None:
                live.close()


def test_the_metrics_operation_of_a_control_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    live = Live(2, control=path, metrics=None)
    try:
        answer = ControlClient(path).request({"op": "metrics"})
        assert answer["ok"] and abs(answer["started"] - time.time()) < 120
        families = {f.name: f for f in exporters.decode_families(answer["families"])}
        assert [s.value for s in families["ikecore_ike_main_mode"].samples] == [2.0]
        assert families["ikecore_ike_main_mode"].type == "counter" and not set(PER_SA) & set(families)
    finally:
        live.close()


def test_the_merge_keeps_counters_monotonic_over_restarts() -> None:
    """Merging answers directly: a worker's counters are carried while it is down and
    added to when it comes back as a new process; socket drops are not carried."""
    def answer(started: float, main_mode: float, isadb: float, drops: float) -> dict[str, Any]:
        return {"ok": True, "started": started, "families": [
            ["ikecore_ike_main_mode", "counter", "d", [["ikecore_ike_main_mode_total", {}, main_mode]]],
            ["ikecore_isadb_list_size", "gauge", "d", [["ikecore_isadb_list_size", {}, isadb]]],
            ["ikecore_udp_receive_drops", "counter", "d", [["ikecore_udp_receive_drops_total", {}, drops]]],
            ["ikecore_build_info", "gauge", "d", [["ikecore_build_info", {"version": "1"}, 1.0]]]]}

    def values(families: list[Any]) -> dict[str, float]:
        return {s.name + "".join(f",{v}" for v in s.labels.values()): s.value for f in families for s in f.samples}
    merger = fleet_metrics.FleetMerger(started=50.0)
    merged = values(merger.merge([(0, answer(100.0, 10, 4, 7)), (1, answer(101.0, 20, 6, 1))]))
    assert merged["ikecore_ike_main_mode_total"] == 30 and merged["ikecore_isadb_list_size"] == 10
    assert merged["ikecore_build_info,1"] == 1.0 and merged["ikecore_udp_receive_drops_total"] == 8
    merged = values(merger.merge([(0, answer(100.0, 11, 4, 7)), (1, None)]))
    assert merged["ikecore_ike_main_mode_total"] == 31 and merged["ikecore_isadb_list_size"] == 4
    assert merged["ikecore_worker_up,1"] == 0
    merged = values(merger.merge([(0, answer(100.0, 12, 4, 7)), (1, answer(200.0, 3, 1, 2))]))
    assert merged["ikecore_ike_main_mode_total"] == 12 + 20 + 3 and merged["ikecore_isadb_list_size"] == 5
    assert merged["ikecore_udp_receive_drops_total"] == 9  # the sockets' own count, not carried
    merged = values(merger.merge([(0, {"ok": False, "error": "unknown op"}), (1, answer(200.0, 4, 1, 2))]))
    assert merged["ikecore_ike_main_mode_total"] == 12 + 20 + 4 and merged["ikecore_worker_up,0"] == 0


def test_per_sa_shares_fill_the_cap_as_evenly_as_the_workers_allow() -> None:
    assert fleet_metrics._shares([10, 10], 6) == [3, 3]
    assert fleet_metrics._shares([1, 100], 10) == [1, 9]
    assert fleet_metrics._shares([0, 2, 50], 10) == [0, 2, 8]
    assert fleet_metrics._shares([5, 5], 0) == [0, 0]
    assert sum(fleet_metrics._shares([7, 3, 9], 12)) == 12


def test_serve_with_metrics_flags_end_to_end(tmp_path: Path) -> None:
    """``ikecore serve --metrics ... --metrics-per-sa 1`` as a process, asked by a real client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen",
                              f"127.0.0.1:{port}", "--psk", PSK, "--metrics", "127.0.0.1:0", "--metrics-per-sa", "1",
                              "--metrics-cache", "0.2", "--metrics-connections", "2", "--quiet", "--duration", "60"],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                             env=env)
    try:
        lines: list[str] = []
        while not any("metrics at" in line for line in lines):
            line = serve.stderr.readline()  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line)
        url = lines[-1].split("metrics at ", 1)[1].strip()
        for i in (1, 2):
            done = subprocess.run([sys.executable, "-m", "ikecore", "connect", f"127.0.0.1:{port}", "--psk", PSK,
                                   "--local", f"127.0.14.{i}:0", "--keep", "--json"],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done.stderr
        time.sleep(0.3)
        _text, families = _scrape(url)
        assert _value(families, "ikecore_ike_main_mode_total") == 2
        assert len(families[PER_SA[0]].samples) == 1 and _value(families, "ikecore_per_sa_series_dropped") == 1
    finally:
        serve.terminate()
        serve.wait(15)
