"""Finding and acting on SAs, and one monitor over a gateway of several worker processes.

``--where``/``--limit`` are applied inside the gateway (checked against the SA records
read directly); ``terminate`` deletes the matching SAs and the peers hear of it (their own
engines lose the SAs); the parent's fan-out control socket merges real workers' answers
(real gateways negotiating over loopback, each with its own control socket) and names the
workers that do not answer; and a real ``ikecore serve --workers 2`` is monitored, one of
its workers killed, through its one control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ikecore.cli.main import build_parser
from ikecore.config import Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.gateway.transport import Gateway
from ikecore.monitor import actions
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.cli import run, start_fleet_services, start_services, terminate
from ikecore.monitor.control import ControlServer, request
from ikecore.monitor.control_client import ControlError
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.hostinfo import HostConfig
from ikecore.monitor.text import COLUMNS, DEFAULT_COLUMNS
from ikecore.monitor.views import ViewError, Views

from tests.helpers import RESPONDER, Link

PSK = "fleet-monitor-secret"
WALL = 1_800_000_000.0


# --- one gateway: --where, --limit and the worker column, against the SA records -------------


def _link(peers: int = 6) -> Link:
    link = Link()
    for i in range(peers):
        link.initiator.initiate(RESPONDER, local=(f"127.0.0.{10 + i}", 500), now=link.now)
    link.pump(rounds=200)
    assert len(link.responder.sas()) == peers
    return link


def _views(link: Link, engine: Engine | None = None) -> Views:
    return Views(engine or link.responder, Monitor(), clock=lambda: link.now, wall=lambda: WALL, host=HostConfig())


def _cookies(rows: list[dict[str, Any]]) -> set[str]:
    return {row["initiator_cookie"] for row in rows}


def _truth(engine: Engine, keep: Callable[[Any], bool]) -> set[str]:
    return {sa.initiator_cookie.hex() for sa in engine.sas() if keep(sa)}


def test_where_keeps_the_rows_whose_column_has_the_value_address_or_cidr() -> None:
    link = _link()
    views = _views(link)
    engine = link.responder
    one = engine.sas()[2].remote[0]
    cases: list[tuple[list[str], Callable[[Any], bool]]] = [
        ([f"peer={one}"], lambda sa: sa.remote[0] == one),
        (["peer=127.0.0.12/31"], lambda sa: ipaddress.ip_address(sa.remote[0]) in
         ipaddress.ip_network("127.0.0.12/31")),
        (["peer=127.0.0.0/8", "state=ESTABLISHED"], lambda sa: sa.state.value == "ESTABLISHED"),
        (["me=127.0.0.1", "role=responder", "quick_modes=1"], lambda sa: len(sa.ipsec_sas) == 1),
        (["peer=10.0.0.0/8"], lambda sa: False),
        (["state=ESTABLISHED", "dpd=false", "worker=0"], lambda sa: sa.state.value == "ESTABLISHED"
         and not sa.dpd),
        ([f"initiator_cookie={engine.sas()[4].initiator_cookie.hex()}"],
         lambda sa: sa is engine.sas()[4]),
    ]
    for where, keep in cases:
        expected = _truth(engine, keep)
        rows = views.query("main-mode", "security-associations", "peer,initiator_cookie", where=where)["rows"]
        assert _cookies(rows) == expected, where
        as_json = json.loads(views.query_json("main-mode", "security-associations", "initiator_cookie",
                                              where=where)[1])
        assert _cookies(as_json) == expected, where
    assert len(_truth(engine, lambda sa: True)) == 6  # the cases above are not all "everything"
    # Quick Mode rows: one per IPsec SA pair of the matching ISAKMP SAs.
    qm = json.loads(views.query_json("quick-mode", "security-associations", "peer,spi_in",
                                     where=[f"peer={one}"])[1])
    assert {r["spi_in"] for r in qm} == {i.spi_in.hex() for sa in engine.sas() if sa.remote[0] == one
                                         for i in sa.ipsec_sas}
    assert len(qm) == 1
    spi = qm[0]["spi_in"]
    assert [r["peer"] for r in views.query("quick-mode", "security-associations", where=[f"spi_in={spi}"])["rows"]] \
        == [one]
    # Views that are no SA list filter too.
    names = views.query("main-mode", "generic-filters", where=["name=" + engine.config.filters[0].name])["rows"]
    assert len(names) == 1
    stats = views.query("main-mode", "statistics", where=["statistic=ike_main_mode"])["rows"]
    assert stats == [{"statistic": "ike_main_mode", "value": 0}]


def test_limit_cuts_after_the_sort_and_the_filter() -> None:
    link = _link()
    views = _views(link)
    peers = sorted((sa.remote[0] for sa in link.responder.sas()), key=ipaddress.ip_address, reverse=True)
    for query in (views.query, lambda *a, **k: {"rows": json.loads(views.query_json(*a, **k)[1])}):
        rows = query("main-mode", "security-associations", "peer", sort="peer:desc", limit=3)["rows"]
        assert [r["peer"] for r in rows] == peers[:3]
        rows = query("main-mode", "security-associations", "peer", sort="peer", limit=2,
                     where=["peer=127.0.0.12/30"])["rows"]
        assert [r["peer"] for r in rows] == ["127.0.0.12", "127.0.0.13"]
        assert len(query("main-mode", "security-associations", limit=4)["rows"]) == 4
        assert query("main-mode", "security-associations", limit=0)["rows"] == []
        assert len(query("quick-mode", "security-associations", limit=5)["rows"]) == 5
    with pytest.raises(ViewError, match="limit must be a whole number"):
        views.query("main-mode", "security-associations", limit=-1)


def test_an_unknown_column_or_a_malformed_condition_names_the_fix() -> None:
    views = _views(_link(1))
    with pytest.raises(ViewError) as info:
        views.query_json("main-mode", "security-associations", where=["bogus=1"])
    message = str(info.value)
    assert "unknown column 'bogus'" in message and "\n" not in message
    assert ", ".join(COLUMNS[("main-mode", "security-associations")]) in message
    with pytest.raises(ViewError, match="COLUMN=VALUE"):
        views.query("main-mode", "security-associations", where=["peer"])
    with pytest.raises(ViewError, match="address or a CIDR"):
        views.query("main-mode", "security-associations", where=["peer=not-an-address"])
    with pytest.raises(ViewError, match="unknown column 'state'.*spi_in"):
        views.query("quick-mode", "security-associations", where=["state=ESTABLISHED"])


def test_the_worker_column_is_the_engines_worker_index_and_not_a_default() -> None:
    link = _link(2)
    for key in (("main-mode", "security-associations"), ("quick-mode", "security-associations")):
        assert "worker" in COLUMNS[key] and "worker" not in DEFAULT_COLUMNS[key]
    assert {r["worker"] for r in _views(link).query("main-mode", "security-associations", "+worker")["rows"]} == {0}
    link.responder.worker = (3, 4)  # as ``Engine(worker=(3, 4))`` sets it
    views = _views(link)
    for mode in ("main-mode", "quick-mode"):
        assert {r["worker"] for r in views.query(mode, "security-associations", all_columns=True)["rows"]} == {3}
        assert {r["worker"] for r in json.loads(views.query_json(mode, "security-associations",
                                                                 all_columns=True)[1])} == {3}
    assert len(views.query("main-mode", "security-associations", where=["worker=3"])["rows"]) == 2
    assert views.query("main-mode", "security-associations", where=["worker=0"])["rows"] == []


def test_a_filter_reads_one_column_of_the_sas_that_do_not_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """``peer=ADDR`` among many SAs: the rows of the others are never built (no dict, no JSON)."""
    link = _link(6)
    views = _views(link)
    built: list[int] = []
    real = sa_listing.json_rows

    def counting(keys: list[str], columns: list[list[Any]]) -> bytes:
        built.append(len(columns[0]) if columns else 0)
        return real(keys, columns)
    monkeypatch.setattr(sa_listing, "json_rows", counting)
    one = link.responder.sas()[3].remote[0]
    rows = json.loads(views.query_json("main-mode", "security-associations", all_columns=True,
                                       where=[f"peer={one}"])[1])
    assert [r["peer"] for r in rows] == [one] and sum(built) == 1


def test_terminate_deletes_the_matching_sas_and_the_peer_hears_of_it(tmp_path: Path) -> None:
    link = _link(4)
    engine, peer = link.responder, link.initiator
    victim = engine.sas()[1]
    cookie = victim.initiator_cookie
    assert any(sa.initiator_cookie == cookie for sa in peer.sas())
    with pytest.raises(ViewError, match="peer=ADDR"):
        actions.terminate(engine, [])
    with pytest.raises(ViewError, match="unknown column 'nope'"):
        actions.terminate(engine, ["nope=1"])
    assert [sa.handle for sa in actions.matching(engine, [f"peer={victim.remote[0]}"], now=link.now)] == \
        [victim.handle]
    assert actions.terminate(engine, [f"peer={victim.remote[0]}"]) == 1
    assert engine.sa(victim.handle) is None and len(engine.sas()) == 3
    link.pump()
    # The peer got the Delete notifications: its own engine dropped the ISAKMP SA.
    assert not any(sa.initiator_cookie == cookie for sa in peer.sas())
    assert len(peer.sas()) == 3
    # The same through a control socket (mode 0600: it can delete SAs now).
    views = _views(link)

    async def scenario() -> list[dict[str, Any]]:
        server = ControlServer(views)
        await server.start(str(tmp_path / "c.sock"))
        assert os.stat(tmp_path / "c.sock").st_mode & 0o777 == 0o600
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        answers = []
        for req in ({"op": "terminate", "where": ["peer=127.0.0.12/31"]}, {"op": "terminate"},
                    {"op": "terminate", "where": ["colour=blue"]}, {"op": "terminate", "where": 7}):
            writer.write(json.dumps(req).encode() + b"\n")
            answers.append(json.loads(await reader.readline()))
        writer.close()
        server.close()
        return answers
    deleted, empty, bad, wrong = asyncio.run(scenario())
    assert deleted == {"ok": True, "deleted": 2}
    assert not empty["ok"] and "peer=ADDR" in empty["error"]
    assert not bad["ok"] and "unknown column 'colour'" in bad["error"]
    assert not wrong["ok"] and "where" in wrong["error"]
    link.pump()
    assert sorted(sa.remote[0] for sa in engine.sas()) == ["127.0.0.10"]
    assert sorted(sa.local[0] for sa in peer.sas()) == ["127.0.0.10"]


def test_a_gateway_adds_operations_to_its_control_socket(tmp_path: Path) -> None:
    views = _views(_link(1))
    seen: list[dict[str, Any]] = []

    def echo(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True, "echo": req.get("text")}

    async def scenario() -> list[dict[str, Any]]:
        server = ControlServer(views, extra_ops={"echo": echo})
        await server.start(str(tmp_path / "x.sock"))
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "x.sock"))
        answers = []
        for req in ({"op": "echo", "text": "hi"}, {"op": "nothing"}):
            writer.write(json.dumps(req).encode() + b"\n")
            answers.append(json.loads(await reader.readline()))
        writer.close()
        server.close()
        return answers
    echoed, unknown = asyncio.run(scenario())
    assert echoed == {"ok": True, "echo": "hi"} and seen == [{"op": "echo", "text": "hi"}]
    assert not unknown["ok"] and "echo" in unknown["error"] and "terminate" in unknown["error"]


# --- several workers: the parent's fan-out socket over real gateways ----------------------------


class LoopThread:
    """An event loop on its own thread."""

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


class WorkerGateway(LoopThread):
    """Worker k of n: a real gateway (its own engine, socket and control socket)."""

    def __init__(self, index: int, count: int, control: str) -> None:
        super().__init__()
        config = config_from_flags(psk=PSK, listen=(("127.0.0.1", 0),),
                                   timing=Timing(retransmit_timeout=0.5, negotiation_timeout=10.0))
        self.engine = Engine(config, worker=(index, count))
        self.monitor = Monitor()
        self.gateway = Gateway(self.engine, monitor=self.monitor)
        self.address = self.call(lambda: self.gateway.listen(config.listen))[0]
        self.services = self.call(lambda: start_services(self.gateway, control, None))
        self.control = control

    def close(self) -> None:
        self.call(self.services.close)
        self.call(self.gateway.close)
        super().close()


@dataclass
class FakeWorker:
    index: int
    control: str
    pid: int | None
    state: str = "up"
    restarts: int = 0
    last_exit: str = ""


class FakeSupervisor:
    """What the fan-out reads of ``ikecore.gateway.workers.Supervisor``."""

    def __init__(self, workers: list[FakeWorker]) -> None:
        self.workers = workers

    def status(self) -> list[dict[str, Any]]:
        return [{"worker": w.index, "pid": w.pid, "state": w.state, "restarts": w.restarts,
                 "last_exit": w.last_exit} for w in self.workers]


class Fleet:
    """Two worker gateways, peers negotiated with each, and the parent's fan-out socket."""

    def __init__(self, tmp: Path) -> None:
        private = tmp / "workers"
        private.mkdir(mode=0o700)
        self.workers = [WorkerGateway(k, 2, str(private / f"w{k}.sock")) for k in range(2)]
        self.supervisor = FakeSupervisor([FakeWorker(k, w.control, 40000 + k) for k, w in enumerate(self.workers)])
        self.parent = LoopThread()
        self.path = str(tmp / "fleet.sock")
        self.services = self.parent.call(lambda: start_fleet_services(
            self.supervisor, argparse.Namespace(control=self.path, metrics=None)))
        self.peers = LoopThread()
        self.peer = Gateway(Engine(config_from_flags(psk=PSK, listen=())), monitor=Monitor())
        self.peer_of: dict[str, int] = {}  # peer address -> worker index

    def connect(self, worker: int, addresses: list[str]) -> None:
        target = self.workers[worker].address

        async def all_of() -> list[Any]:
            out = []
            for address in addresses:
                local = await self.peer.open((address, 0))
                out.append(await self.peer.connect(target, local=local, timeout=20))
            return out
        results = self.peers.call(all_of)
        assert all(r.ok for r in results), [r.reason for r in results]
        self.peer_of.update({a: worker for a in addresses})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                sum(len(sa.ipsec_sas) for sa in w.call(w.engine.sas)) < sum(1 for v in self.peer_of.values() if v == k)
                for k, w in enumerate(self.workers)):
            time.sleep(0.02)

    def close(self) -> None:
        self.parent.call(self.services.close)
        self.parent.close()
        for worker in self.workers:
            worker.close()
        self.peers.call(self.peer.close)
        self.peers.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    fleet.connect(0, ["127.0.9.1", "127.0.9.2", "127.0.9.3"])
    fleet.connect(1, ["127.0.9.4", "127.0.9.5"])
    yield fleet
    fleet.close()


def _monitor(path: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(["monitor", *argv, "--control", path])
    return run(args, out), out.getvalue()


def _ikecore(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_the_parent_lists_every_workers_sas_filtered_sorted_and_cut(fleet: Fleet) -> None:
    path = fleet.path
    assert os.stat(path).st_mode & 0o777 == 0o600
    truth = {sa.initiator_cookie.hex(): (k, sa.remote[0]) for k, w in enumerate(fleet.workers)
             for sa in w.call(w.engine.sas)}
    assert len(truth) == 5
    done = _ikecore("monitor", "main-mode", "security-associations", "--control", path, "--format", "json")
    assert done.returncode == 0 and done.stderr == ""
    rows = json.loads(done.stdout)
    assert {r["initiator_cookie"]: (r["worker"], r["peer"]) for r in rows} == truth
    assert all(r["state"] == "ESTABLISHED" for r in rows)
    for address, worker in fleet.peer_of.items():
        code, text = _monitor(path, "main-mode", "security-associations", "--where", f"peer={address}",
                              "--format", "json", "--columns", "peer,worker")
        assert code == 0 and json.loads(text) == [{"peer": address, "worker": worker}]
    code, text = _monitor(path, "main-mode", "security-associations", "--where", "peer=127.0.9.2/31",
                          "--format", "json", "--columns", "peer", "--sort", "peer")
    assert json.loads(text) == [{"peer": "127.0.9.2"}, {"peer": "127.0.9.3"}]
    # A sort and a limit across workers: merged, then cut (the sort column need not be shown).
    code, text = _monitor(path, "main-mode", "security-associations", "--sort", "peer:desc", "--limit", "3",
                          "--format", "json", "--columns", "worker")
    assert json.loads(text) == [{"worker": 1}, {"worker": 1}, {"worker": 0}]
    code, text = _monitor(path, "main-mode", "security-associations", "--sort", "peer", "--limit", "4",
                          "--format", "json", "--columns", "peer")
    assert [r["peer"] for r in json.loads(text)] == [f"127.0.9.{i}" for i in (1, 2, 3, 4)]
    code, text = _monitor(path, "main-mode", "security-associations", "--limit", "2", "--format", "json")
    assert code == 0 and len(json.loads(text)) == 2
    code, text = _monitor(path, "quick-mode", "security-associations", "--format", "json", "--where",
                          "worker=1", "--columns", "peer,spi_in")
    assert sorted(r["peer"] for r in json.loads(text)) == ["127.0.9.4", "127.0.9.5"]
    code, text = _monitor(path, "main-mode", "security-associations", "--where", "peer=127.0.9.4",
                          "--columns", "peer,state,+worker")
    assert code == 0 and re.search(r"^127\.0\.9\.4\s+ESTABLISHED\s+1$", text, re.M), text
    bad = _ikecore("monitor", "main-mode", "security-associations", "--control", path, "--where", "colour=blue")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "unknown column 'colour'" in bad.stderr
    assert "peer_id" in bad.stderr and "worker" in bad.stderr  # the allowed columns
    bad = _ikecore("monitor", "main-mode", "security-associations", "--control", path, "--where", "peer")
    assert bad.returncode == 2 and "--where" in bad.stderr and "Traceback" not in bad.stderr


def test_the_parent_sums_the_workers_statistics_and_counters(fleet: Fleet) -> None:
    per_worker = [request(w.control, {"op": "view", "mode": "main-mode", "view": "statistics"})["rows"]
                  for w in fleet.workers]
    answer = request(fleet.path, {"op": "view", "mode": "main-mode", "view": "statistics"})
    sums = {row["statistic"]: row["value"] for row in answer["rows"]}
    assert list(sums) == [s.key for s in Statistic]
    for key in sums:
        assert sums[key] == sum({r["statistic"]: r["value"] for r in rows}[key] for rows in per_worker), key
    assert sums["isadb_list_size"] == 5  # a gauge: the ISAKMP SAs of both workers
    assert sums["ike_main_mode"] == 5 == sum(w.monitor.counters[Statistic.IKE_MAIN_MODE] for w in fleet.workers)
    qm = request(fleet.path, {"op": "view", "mode": "quick-mode", "view": "statistics"})["rows"]
    assert {r["statistic"]: r["value"] for r in qm}["active_sas"] == 5
    counters = {r["counter"]: r["value"] for r in request(fleet.path, {"op": "view", "mode": "main-mode",
                                                                       "view": "counters"})["rows"]}
    mine = [{r["counter"]: r["value"] for r in request(w.control, {"op": "view", "mode": "main-mode",
                                                                   "view": "counters"})["rows"]}
            for w in fleet.workers]
    assert counters["negotiation_seconds:phase1:count"] == 5
    for key, value in counters.items():  # histograms bucket by bucket, sums to the microsecond
        assert value == pytest.approx(sum(m.get(key, 0) for m in mine), abs=2e-6), key
    code, text = _monitor(fleet.path, "main-mode", "statistics", "--format", "json")
    assert code == 0 and json.loads(text)["ike_main_mode"] == 5
    # The configuration views come from one worker; the specific filters from all of them.
    assert request(fleet.path, {"op": "view", "mode": "main-mode", "view": "generic-filters"})["rows"] == \
        request(fleet.workers[0].control, {"op": "view", "mode": "main-mode", "view": "generic-filters"})["rows"]
    specific = request(fleet.path, {"op": "view", "mode": "quick-mode", "view": "specific-filters",
                                    "all_columns": True})["rows"]
    assert {r["source_tunnel_endpoint"] for r in specific if r["direction"] == "inbound"} == set(fleet.peer_of)


def test_every_answer_names_the_workers_and_one_that_is_down_is_named(fleet: Fleet) -> None:
    answer = request(fleet.path, {"op": "ping"})
    assert [(w["worker"], w["pid"], w["state"]) for w in answer["workers"]] == [(0, 40000, "up"), (1, 40001, "up")]
    gathered = fleet.parent.call(lambda: fleet.services.fanout.gather({"op": "ping"}))
    assert [(index, bool(a and a["ok"])) for index, a in gathered] == [(0, True), (1, True)]
    listing = request(fleet.path, {"op": "view", "mode": "main-mode", "view": "security-associations"})
    assert [w["answered"] for w in listing["workers"]] == [True, True]
    # Worker 1 dies: its socket is gone and the supervisor says so.
    fleet.workers[1].call(fleet.workers[1].services.close)
    fleet.supervisor.workers[1].state, fleet.supervisor.workers[1].pid = "down", 4242
    fleet.supervisor.workers[1].last_exit = "killed by SIGKILL"
    code, text = _monitor(fleet.path, "main-mode", "security-associations", "--columns", "peer")
    lines = text.rstrip("\n").splitlines()
    assert code == 0
    assert lines[-1] == "worker 1 (pid 4242) is down: killed by SIGKILL; showing the other workers"
    assert sorted(line.strip() for line in lines[2:-1]) == ["127.0.9.1", "127.0.9.2", "127.0.9.3"]
    done = _ikecore("monitor", "main-mode", "security-associations", "--control", fleet.path, "--format", "json")
    assert done.returncode == 0
    assert {r["worker"] for r in json.loads(done.stdout)} == {0}
    assert done.stderr.strip() == "worker 1 (pid 4242) is down: killed by SIGKILL; showing the other workers"
    stats = json.loads(_ikecore("monitor", "main-mode", "statistics", "--control", fleet.path,
                                "--format", "json").stdout)
    assert stats["ike_main_mode"] == 3
    # Up by the supervisor's word but not answering (it died a moment ago): named too.
    fleet.supervisor.workers[1].state = "up"
    code, text = _monitor(fleet.path, "main-mode", "statistics")
    assert code == 0 and text.rstrip().endswith("worker 1 (pid 4242) did not answer; showing the other workers")
    # Nobody answers: an error naming both, exit 1.
    fleet.workers[0].call(fleet.workers[0].services.close)
    fleet.supervisor.workers[0].state, fleet.supervisor.workers[0].pid = "down", None
    fleet.supervisor.workers[0].last_exit = "exited with status 1"
    fleet.supervisor.workers[1].state = "starting"
    out = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                          "--control", fleet.path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == ("ikecore monitor: no worker answered (worker 0 (pid 40000) is down: exited with status 1; "
                          "worker 1 (pid 4242) is starting: killed by SIGKILL)\n")


def test_a_worker_that_hangs_is_named_after_the_timeout(fleet: Fleet, tmp_path: Path) -> None:
    """A worker whose process is stopped (SIGSTOP, a debugger) accepts but never answers."""
    from ikecore.monitor.fanout import FanoutServer

    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp_path / "workers" / "hung.sock"))
    hung.listen(4)
    try:
        supervisor = FakeSupervisor([FakeWorker(0, fleet.workers[0].control, 40000),
                                     FakeWorker(1, str(tmp_path / "workers" / "hung.sock"), 40001)])
        fanout = FanoutServer(supervisor, timeout=0.5)
        path = str(tmp_path / "hung-fleet.sock")
        fleet.parent.call(lambda: fanout.start(path))
        started = time.monotonic()
        code, text = _monitor(path, "main-mode", "security-associations", "--columns", "peer")
        assert code == 0 and time.monotonic() - started < 5
        assert text.rstrip().endswith("worker 1 (pid 40001) did not answer; showing the other workers")
        assert sorted(line.strip() for line in text.splitlines()[2:-1]) == ["127.0.9.1", "127.0.9.2", "127.0.9.3"]
        fleet.parent.call(fanout.close)
    finally:
        hung.close()


def test_terminate_through_the_parent_deletes_on_every_worker(fleet: Fleet) -> None:
    refused = _ikecore("terminate", "--control", fleet.path)
    assert refused.returncode == 2 and "--where peer=ADDR" in refused.stderr and "Traceback" not in refused.stderr
    bad = _ikecore("terminate", "--control", fleet.path, "--where", "colour=blue")
    assert bad.returncode == 2 and "unknown column 'colour'" in bad.stderr
    peer_cookies = {sa.local[0]: sa.initiator_cookie for sa in fleet.peers.call(fleet.peer.engine.sas)}
    done = _ikecore("terminate", "--control", fleet.path, "--where", "peer=127.0.9.3/32")
    assert done.returncode == 0 and done.stdout == "terminated 1 ISAKMP SA\n", done.stderr
    # 127.0.9.4 on worker 1 and 127.0.9.2 on worker 0: one request, both workers.
    done = _ikecore("terminate", "--control", fleet.path, "--where", "peer=127.0.9.0/24", "--where",
                    "state=ESTABLISHED", "--where", "peer_port=" + str(_port_of(fleet, "127.0.9.4")))
    assert done.returncode == 0 and done.stdout == "terminated 1 ISAKMP SA\n"
    answer = request(fleet.path, {"op": "terminate", "where": ["peer=127.0.9.2"]})
    assert answer["ok"] and answer["deleted"] == 1 and len(answer["workers"]) == 2
    left = sorted((sa.remote[0], k) for k, w in enumerate(fleet.workers) for sa in w.call(w.engine.sas))
    assert left == [("127.0.9.1", 0), ("127.0.9.5", 1)]
    # The peers were told: their own SAs go away (Delete notifications over the wire).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = {sa.local[0] for sa in fleet.peers.call(fleet.peer.engine.sas)}
        if held == {"127.0.9.1", "127.0.9.5"}:
            break
        time.sleep(0.05)
    assert held == {"127.0.9.1", "127.0.9.5"}
    assert set(peer_cookies) == set(fleet.peer_of)
    code, text = _monitor(fleet.path, "quick-mode", "security-associations", "--format", "json", "--columns", "peer")
    assert sorted(r["peer"] for r in json.loads(text)) == ["127.0.9.1", "127.0.9.5"]


def _port_of(fleet: Fleet, address: str) -> int:
    worker = fleet.workers[fleet.peer_of[address]]
    (port,) = [sa.remote[1] for sa in worker.call(worker.engine.sas) if sa.remote[0] == address]
    return int(port)


def test_terminate_command_against_one_gateway(tmp_path: Path) -> None:
    """``ikecore terminate`` on a gateway of one process (no workers)."""
    worker = WorkerGateway(0, 1, str(tmp_path / "one.sock"))
    peers = LoopThread()
    peer = Gateway(Engine(config_from_flags(psk=PSK, listen=())), monitor=Monitor())
    try:
        async def two() -> list[Any]:
            return [await peer.connect(worker.address, local=await peer.open((a, 0)), timeout=20)
                    for a in ("127.0.9.7", "127.0.9.8")]
        assert all(r.ok for r in peers.call(two))
        out = io.StringIO()
        args = build_parser().parse_args(["terminate", "--control", worker.control, "--where", "peer=127.0.9.8"])
        assert terminate(args, out) == 0 and out.getvalue() == "terminated 1 ISAKMP SA\n"
        assert [sa.remote[0] for sa in worker.call(worker.engine.sas)] == ["127.0.9.7"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(peers.call(peer.engine.sas)) != 1:
            time.sleep(0.05)
        assert [sa.local[0] for sa in peers.call(peer.engine.sas)] == ["127.0.9.7"]
        none = _ikecore("terminate", "--control", worker.control, "--where", "peer=192.0.2.1")
        assert none.returncode == 0 and none.stdout == "terminated 0 ISAKMP SAs\n"
        with pytest.raises(ControlError, match="peer=ADDR"):
            request(worker.control, {"op": "terminate", "where": []})
    finally:
        peers.call(peer.close)
        peers.close()
        worker.close()


# --- a real gateway of two worker processes ---------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _answer(path: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return request(path, payload, timeout=5)
    except (ControlError, OSError):
        return None


def test_a_real_gateway_of_two_workers_is_one_gateway_to_the_monitor(tmp_path: Path) -> None:
    port = _free_udp_port()
    control = str(tmp_path / "gw.sock")
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--listen",
                                f"127.0.0.1:{port}", "--workers", "2", "--control", control, "--quiet",
                                "--duration", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (a := _answer(control, {"op": "ping"})) and
                  all(w["state"] == "up" for w in a["workers"]), 60, "two workers up")
        peers = LoopThread()
        peer = Gateway(Engine(config_from_flags(psk=PSK, listen=())), monitor=Monitor())
        try:
            async def connect_all() -> list[Any]:
                return [await peer.connect(("127.0.0.1", port), local=await peer.open((f"127.0.8.{i}", 0)),
                                           timeout=20) for i in range(1, 13)]
            results = peers.call(connect_all, timeout=120)
            assert all(r.ok for r in results), [r.reason for r in results]
            mine = {sa.initiator_cookie.hex(): sa.local[0] for sa in peers.call(peer.engine.sas)}
            rows = _wait_for(lambda: (a := _answer(control, {"op": "view", "mode": "main-mode",
                                                             "view": "security-associations",
                                                             "columns": "initiator_cookie,peer,worker"}))
                             and len(a["rows"]) == 12 and a["rows"], 20, "12 SAs listed")
            assert {r["initiator_cookie"]: r["peer"] for r in rows} == mine
            from ikecore.steering import worker_of

            for row in rows:  # each SA is held by the worker its initiator cookie names
                assert row["worker"] == worker_of(bytes.fromhex(row["initiator_cookie"]), 2)
            stats = json.loads(_ikecore("monitor", "main-mode", "statistics", "--control", control,
                                        "--format", "json").stdout)
            assert stats["ike_main_mode"] == 12
            one = _ikecore("monitor", "main-mode", "security-associations", "--control", control, "--where",
                           "peer=127.0.8.5", "--format", "json", "--columns", "peer")
            assert json.loads(one.stdout) == [{"peer": "127.0.8.5"}]
            done = _ikecore("terminate", "--control", control, "--where", "peer=127.0.8.1/32")
            assert done.returncode == 0 and done.stdout == "terminated 1 ISAKMP SA\n"
            _wait_for(lambda: "127.0.8.1" not in {sa.local[0] for sa in peers.call(peer.engine.sas)}, 10,
                      "the peer to hear of the Delete")
            # Kill one worker: the monitor names it and shows the other's SAs.
            status = request(control, {"op": "ping"})["workers"]
            victim = status[1]["pid"]
            os.kill(victim, signal.SIGKILL)
            shown = _wait_for(lambda: (r := _ikecore("monitor", "main-mode", "security-associations", "--control",
                                                     control, "--columns", "peer,+worker")) and
                              "worker 1" in r.stdout and r, 10, "the dead worker to be named")
            assert shown.returncode == 0
            # As the supervisor learns of it: not answering, down, or already starting again.
            assert re.search(rf"^worker 1 \(pid {victim}\) (is down: killed by SIGKILL|did not answer)"
                             r"; showing the other workers$", shown.stdout, re.M) or \
                re.search(r"^worker 1 \(pid \d+\) is starting: killed by SIGKILL; showing the other workers$",
                          shown.stdout, re.M), shown.stdout
            workers_shown = {line.split()[-1] for line in shown.stdout.splitlines()[2:]
                             if line.startswith("127.0.8.")}
            assert workers_shown == {"0"}
            # The parent starts it again.
            _wait_for(lambda: (a := _answer(control, {"op": "ping"})) and a["workers"][1]["state"] == "up"
                      and a["workers"][1]["pid"] != victim, 30, "worker 1 restarted")
        finally:
            peers.call(peer.close)
            peers.close()
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(10)
