"""kill -9 of a real ``ikecore serve --store`` process (tests/killreal.py), short version.

The documented long run is 10,000 SAs and 20 kills with a Quick Mode on every restored SA
(README); here 300 SAs, 3 kills (two while establishing, one idle), 50 Quick Modes on
restored SAs after each restart, and a control run without the store that must fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(TESTS / "killreal.py"), "--sas", "300", "--kills", "3", "--qm-sample", "50",
         "--workdir", str(tmp_path / "kill"), "--wall-limit", "90", *extra],
        capture_output=True, text=True, timeout=150)
    return result, time.monotonic() - started


def test_kill_minus_9_of_serve_with_store_loses_no_established_sa(tmp_path: Path) -> None:
    result, elapsed = _run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS: 3 kills" in result.stdout
    kills = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [k["kill"] for k in kills] == [1, 2, 3]
    assert kills[0]["moment"].startswith("establishing") and kills[-1]["moment"].startswith("idle")
    for k in kills:
        assert k["established_before_kill"] >= k["seen_established_at_kill"] > 0
        assert k["listed_after_restart"] >= k["established_before_kill"]
        assert k["quick_modes_ok"] == min(50, k["established_before_kill"])
    assert kills[-1]["established_before_kill"] == 300 and kills[-1]["ipsec_sas_checked"] >= 290
    assert elapsed < 60


def test_the_kill_check_fails_when_the_gateway_keeps_no_store(tmp_path: Path) -> None:
    result, _elapsed = _run(tmp_path, "--no-store")
    assert result.returncode == 1
    assert "FAIL after 0 kills" in result.stdout and "established before the kill is missing" in result.stdout
