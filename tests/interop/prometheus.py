"""A real Prometheus server for tests: its own configuration, data directory and port.

``Prometheus(directory, scrape_configs, rule_files)`` writes ``prometheus.yml`` (JSON, which
YAML reads), starts ``/usr/bin/prometheus`` on a free port of 127.0.0.1 and waits until it
is ready; ``query(expr)`` asks its HTTP API (``/api/v1/query``), ``wait_for`` polls a
query until a predicate holds (bounded), ``stop()`` (or leaving the ``with`` block) kills
it. ``promtool(*args)`` runs Debian's ``promtool``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["available", "Prometheus", "promtool", "PROMETHEUS", "PROMTOOL"]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def available() -> str | None:
    """None when ``prometheus`` and ``promtool`` can run here; otherwise the reason."""
    for tool in (PROMETHEUS, PROMTOOL):
        if not os.access(tool, os.X_OK):
            return f"{tool} not installed (Debian package prometheus)"
    return None


def promtool(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    """One Prometheus server scraping ``scrape_configs`` every ``interval`` seconds."""

    def __init__(self, directory: Path, scrape_configs: Sequence[dict[str, Any]],
                 rule_files: Sequence[str] = (), interval: float = 1.0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        every = f"{round(interval * 1000)}ms"
        config = {"global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
                  "rule_files": list(rule_files), "scrape_configs": list(scrape_configs)}
        self.config_file = directory / "prometheus.yml"
        self.config_file.write_text(json.dumps(config, indent=1))
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        check = promtool("check", "config", str(self.config_file))
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                 "--storage.tsdb.retention.time=1h"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"prometheus not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        return list(data["result"]) if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (None when the vector is empty)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Callable[[float | None], bool], timeout: float = 30.0) -> float | None:
        """Poll ``value(expr)`` until ``predicate`` holds; the last value either way."""
        deadline = time.monotonic() + timeout
        value = self.value(expr)
        while not predicate(value) and time.monotonic() < deadline:
            time.sleep(0.5)
            value = self.value(expr)
        return value

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])
