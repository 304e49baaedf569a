"""A fleet on Prometheus: a real Prometheus server (its own configuration, data directory
and port, scraping every second, with the rules of ``prometheus/``) scrapes two gateways
of two workers each (``ikecore serve --workers 2 --metrics``) while a load test runs
against both; through its HTTP API the fleet-wide sums equal what the load generators
established. And every metric the rules name is one a gateway really serves."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from interop.prometheus import PROMTOOL, Prometheus, promtool
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

pytestmark = pytest.mark.interop("prometheus")

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "ikecore-rules.yml"
RULE_TESTS = ROOT / "prometheus" / "ikecore-rules.test.yml"
PSK = "prometheus-fleet-secret"
WORKERS = 2
PEERS = 180  # per gateway


class ServedGateway:
    """``ikecore serve --workers 2 --metrics 127.0.0.1:0`` on a free UDP port of 127.0.0.1."""

    def __init__(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ikecore", "serve", "--workers", str(WORKERS), "--listen",
             f"127.0.0.1:{self.port}", "--psk", PSK, "--metrics", "127.0.0.1:0", "--quiet", "--duration", "300"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("listening on" in line for line in lines) and time.monotonic() < deadline:
            line = self.process.stderr.readline()  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line)
        found = re.search(r"metrics at http://(\S+)/metrics", "".join(lines))
        assert found, "".join(lines)
        self.target = found.group(1)
        self.url = f"http://{self.target}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as reply:
            return str(reply.read().decode())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[ServedGateway]]:
    gateways: list[ServedGateway] = []
    try:
        for _ in range(2):
            gateways.append(ServedGateway())
        yield gateways
    finally:
        for gateway in gateways:
            gateway.close()


def _load(gateway: ServedGateway, first_address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{gateway.port}", "--psk", PSK,
                             "--peers", str(PEERS), "--rate", "60", "--first-address", first_address, "--timeout", "30",
                             "--max-seconds", "120", "--no-progress", "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _samples(prometheus: Prometheus, selector: str, window: str = "5m") -> list[float]:
    data = prometheus.api("query", query=f"{selector}[{window}]")
    assert data["resultType"] == "matrix"
    return [float(v) for series in data["result"] for _t, v in series["values"]]


def test_prometheus_sums_the_fleet_as_the_load_generators_counted(fleet: list[ServedGateway], tmp_path: Path) -> None:
    jobs = [{"job_name": "ikecore", "static_configs": [{"targets": [g.target for g in fleet]}]}]
    with Prometheus(tmp_path / "prometheus", jobs, rule_files=[str(RULES)]) as prometheus:
        assert prometheus.wait_for('count(up{job="ikecore"} == 1)', lambda v: v == 2.0) == 2.0
        loads = [_load(gateway, first) for gateway, first in zip(fleet, ("127.30.0.1", "127.31.0.1"))]
        reports: list[dict[str, Any]] = []
        for load in loads:
            out, err = load.communicate(timeout=180)
            assert load.returncode == 0, err
            reports.append(json.loads(out))
        established = sum(r["established"] for r in reports)
        assert established == 2 * PEERS, reports  # a quiet loopback: every peer gets through
        assert sum(r["quick_modes"] for r in reports) == established
        # Prometheus' own sums over both gateways (each the merge of its two workers)
        total = prometheus.wait_for("sum(ikecore_ike_main_mode_total)", lambda v: v == established)
        assert total == established
        assert prometheus.value('sum(ikecore_phase1_established_total{role="responder"})') == established
        assert prometheus.wait_for("sum(ikecore_ike_quick_mode_total)", lambda v: v == established) == established
        assert prometheus.wait_for("sum(ikecore_isadb_list_size)", lambda v: v == established) == established
        for gateway, report in zip(fleet, reports):
            assert prometheus.value(f'ikecore_ike_main_mode_total{{instance="{gateway.target}"}}') == \
                report["established"]
        assert prometheus.value("sum(ikecore_workers)") == 2 * WORKERS
        assert prometheus.value("sum(ikecore_worker_up)") == 2 * WORKERS
        assert prometheus.value("count(ikecore_worker_up)") == 2 * WORKERS
        # the load was watched while it ran: values between none and all were scraped
        seen = _samples(prometheus, "sum(ikecore_ike_main_mode_total)", "5m:1s")
        assert any(0 < v < established for v in seen), seen
        # the recording rules, evaluated by this server
        assert prometheus.wait_for('job:ikecore_isadb_list_size:sum{job="ikecore"}',
                                   lambda v: v == established) == established
        assert prometheus.wait_for('job:ikecore_workers_up:sum{job="ikecore"}',
                                   lambda v: v == 2 * WORKERS) == 2 * WORKERS
        rate = prometheus.wait_for('job:ikecore_ike_main_mode:rate5m{job="ikecore"}', lambda v: v is not None and v > 0)
        assert rate is not None and rate > 0
        firing = prometheus.query('ALERTS{alertstate="firing"}')
        assert firing == [], firing  # a healthy fleet raises no alert
        for gateway in fleet:
            assert gateway.process.poll() is None


def _rule_metric_names() -> set[str]:
    """Every ikecore metric named in an expression of the rules (not recording-rule names)."""
    names: set[str] = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names.update(re.findall(r"(?<![:\w])ikecore_[a-z0-9_]+", rule["expr"]))
    return names


def test_every_metric_the_rules_name_is_served(fleet: list[ServedGateway]) -> None:
    served = {sample.name for family in parse_prometheus(fleet[0].scrape()) for sample in family.samples}
    named = _rule_metric_names()
    assert len(named) >= 15, named
    assert named <= served, sorted(named - served)


def test_the_rules_pass_promtool() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr

