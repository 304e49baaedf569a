"""The IP Security Monitor page (``ikecore serve --web``) in a real headless Chromium.

A real gateway (``ikecore serve``) holds 1,000 SAs negotiated by ``ikecore loadtest`` over
loopback; Debian's Chromium, driven by Selenium through Debian's chromedriver, loads the
page and uses it as a person would: the tree, the SA table's default columns, sorting by
clicking a header, adding and removing columns, the filter box, live statistics while a
load test runs. A screenshot of each view is saved under ``$IKECORE_ARTIFACTS`` (or the
test's temporary directory). The token and the gateway of worker processes are checked
with a plain HTTP client.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interop import chromium

PSK = "web-monitor-secret"
DOCUMENT_COLUMNS = ["Me", "My ID", "Peer", "Peer ID", "Authentication", "Encryption", "Integrity", "Diffie-Hellman"]


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Gateway:
    """``ikecore serve --web`` on free loopback ports; ``stop()`` ends it."""

    def __init__(self, *extra: str, workers: int = 1) -> None:
        self.port = _free_port(socket.SOCK_DGRAM)
        self.web_port = _free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        command = [sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{self.port}", "--psk", PSK,
                   "--quiet", "--duration", "240", "--web", f"127.0.0.1:{self.web_port}", *extra]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        seen = []
        for _ in range(40):  # the page's line and the "listening on" line (of the parent)
            line = self.process.stderr.readline()
            seen.append(line)
            page = any("monitor page" in line for line in seen)
            if not line or (page and any("listening on" in line for line in seen)):
                break
        assert page and any("listening on" in line for line in seen), seen

    def loadtest(self, peers: int, *extra: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{self.port}", "--peers",
                               str(peers), "--psk", PSK, "--json", "--no-progress", "--max-seconds", "90", *extra],
                              capture_output=True, text=True, timeout=120)
        result: dict[str, Any] = json.loads(done.stdout)
        assert result["established"] == peers, (result, done.stderr[-2000:])
        return result

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("IKECORE_ARTIFACTS")
    directory = Path(chosen) / "web" if chosen else tmp_path_factory.mktemp("web-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    running = Gateway()
    try:
        running.loadtest(1000, "--concurrency", "100")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from conftest import require_interop_tools

    require_interop_tools("chromium")
    driver = chromium.browser()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - a stale element while the table redraws
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _open(browser: Any, gateway: Gateway, mode: str, view: str) -> None:
    from selenium.webdriver.common.by import By

    if not browser.current_url.startswith(gateway.url):
        browser.get(gateway.url + "/")
        _wait("the tree", lambda: browser.find_elements(By.CSS_SELECTOR, "#tree a"))
    browser.find_element(By.CSS_SELECTOR, f'#tree a[data-mode="{mode}"][data-view="{view}"]').click()
    _wait(f"{mode} {view}", lambda: browser.execute_script(
        "return document.body.dataset.view === arguments[0] && document.body.dataset.key &&"
        " document.body.dataset.key.startsWith(arguments[0])", f"{mode}/{view}"))


def _click(browser: Any, css: str) -> None:
    """Click the element (found again if the page redrew it meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            browser.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{css} kept being redrawn")


def _headers(browser: Any) -> list[str]:
    return list(browser.execute_script("return [...document.querySelectorAll('#grid thead th')]"
                                       ".map(th => th.textContent)"))


def _column(browser: Any, key: str) -> list[str]:
    return list(browser.execute_script(
        "return [...document.querySelectorAll('#grid tbody td[data-col=\"' + arguments[0] + '\"]')]"
        ".map(td => td.textContent)", key))


def _all_peers(gateway: Gateway) -> list[str]:
    status, answer = gateway.get("/api/view?mode=main-mode&view=security-associations&columns=peer&limit=5000")
    assert status == 200
    return [row["peer"] for row in answer["rows"]]


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# --- the page, in the browser --------------------------------------------------------------------


def test_the_page_loads_with_the_tree_and_the_documents_eight_sa_columns(
        gateway: Gateway, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from selenium.webdriver.common.by import By

    browser.get(gateway.url + "/")
    _wait("the SA table", lambda: browser.execute_script("return document.body.dataset.total") == "1000")
    tree = [(a.get_attribute("data-mode"), a.text) for a in browser.find_elements(By.CSS_SELECTOR, "#tree a")]
    assert tree == [("main-mode", "Generic Filters"), ("main-mode", "Specific Filters"),
                    ("main-mode", "IKE Policies"), ("main-mode", "Statistics"),
                    ("main-mode", "Security Associations"), ("quick-mode", "Generic Filters"),
                    ("quick-mode", "Specific Filters"), ("quick-mode", "Statistics"),
                    ("quick-mode", "Security Associations")]
    assert _headers(browser) == DOCUMENT_COLUMNS
    assert browser.find_element(By.ID, "count").text == "1,000 rows"
    # only the rows in view are in the document, not the 1,000
    painted = len(browser.find_elements(By.CSS_SELECTOR, "#grid tbody tr"))
    assert 5 <= painted < 100
    assert set(_column(browser, "peer")) <= set(_all_peers(gateway))
    # a screenshot of every view
    artifacts = _artifacts(tmp_path_factory)
    for mode, view in [(m, v) for m in ("main-mode", "quick-mode") for v in
                       ("generic-filters", "specific-filters", "ike-policies", "statistics", "security-associations")
                       if not (m == "quick-mode" and v == "ike-policies")]:
        _open(browser, gateway, mode, view)
        _wait(f"rows of {mode} {view}", lambda: browser.find_elements(By.CSS_SELECTOR, "#grid tbody tr"))
        if view == "statistics":
            _wait("the charts", lambda: browser.execute_script("return Number(document.body.dataset.series) >= 1"))
        browser.save_screenshot(str(artifacts / f"{mode}-{view}.png"))
        assert (artifacts / f"{mode}-{view}.png").stat().st_size > 1000
    _open(browser, gateway, "quick-mode", "security-associations")
    assert _headers(browser) == ["Me", "Peer", "Protocol", "Encryption", "Integrity", "Diffie-Hellman", "SPI In",
                                 "SPI Out"]


def test_clicking_the_peer_header_sorts_by_peer_both_ways(gateway: Gateway, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, gateway, "main-mode", "security-associations")
    peers = sorted(_all_peers(gateway), key=_ip)
    assert len(peers) >= 1000

    def click_peer() -> None:
        _click(browser, '#grid thead th[data-col="peer"]')

    def sorted_by(sort: str) -> list[str] | None:
        key = browser.execute_script("return document.body.dataset.key")
        return _column(browser, "peer") if key.endswith(sort) else None

    click_peer()
    shown = _wait("ascending peers", lambda: sorted_by("&sort=peer"))
    assert shown == peers[:len(shown)] and len(shown) >= 5
    assert "sorted" in browser.find_element(By.CSS_SELECTOR, '#grid thead th[data-col="peer"]').get_attribute("class")
    click_peer()
    shown = _wait("descending peers", lambda: sorted_by("&sort=peer%3Adesc"))
    assert shown == peers[::-1][:len(shown)]
    assert "desc" in browser.find_element(By.CSS_SELECTOR, '#grid thead th[data-col="peer"]').get_attribute("class")
    # scrolled to the end, the last rows of the gateway's listing are fetched and shown
    browser.execute_script("const s = document.getElementById('scroller'); s.scrollTop = s.scrollHeight;")
    _wait("the last peers", lambda: peers[0] in _column(browser, "peer"))


def test_adding_and_removing_a_column(gateway: Gateway, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, gateway, "main-mode", "security-associations")
    browser.find_element(By.CSS_SELECTOR, "#chooser summary").click()
    browser.find_element(By.CSS_SELECTOR, '#columns input[data-col="state"]').click()
    _wait("the State column", lambda: _headers(browser) == DOCUMENT_COLUMNS + ["State"])
    assert set(_wait("states", lambda: _column(browser, "state"))) == {"ESTABLISHED"}
    browser.find_element(By.CSS_SELECTOR, '#columns input[data-col="peer_id"]').click()
    _wait("no Peer ID", lambda: _headers(browser) == [c for c in DOCUMENT_COLUMNS if c != "Peer ID"] + ["State"])
    assert not _column(browser, "peer_id")
    browser.find_element(By.CSS_SELECTOR, '#columns input[data-col="state"]').click()
    browser.find_element(By.CSS_SELECTOR, '#columns input[data-col="peer_id"]').click()
    _wait("the defaults again", lambda: _headers(browser)[:3] == ["Me", "My ID", "Peer"] and
          sorted(_headers(browser)) == sorted(DOCUMENT_COLUMNS))
    browser.find_element(By.CSS_SELECTOR, "#chooser summary").click()


def test_the_filter_box_narrows_the_rows_with_the_where_rules(gateway: Gateway, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, gateway, "main-mode", "security-associations")
    peers = _all_peers(gateway)
    one = peers[123]
    box = browser.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(f"peer={one}")
    _wait("one row", lambda: browser.execute_script("return document.body.dataset.total") == "1")
    assert _column(browser, "peer") == [one]
    network = ipaddress.ip_network(f"{one}/24", strict=False)
    expected = sum(ipaddress.ip_address(p) in network for p in peers)
    assert 1 < expected < len(peers)
    box.clear()
    box.send_keys(f"peer={network} state=ESTABLISHED")
    _wait("a /24", lambda: browser.execute_script("return document.body.dataset.total") == str(expected))
    assert all(ipaddress.ip_address(p) in network for p in _column(browser, "peer"))
    box.clear()
    box.send_keys("nosuchcolumn=1")
    _wait("the gateway's error", lambda: "unknown column" in browser.find_element(By.ID, "error").text)
    box.clear()
    box.send_keys(" ")
    _wait("every row", lambda: browser.execute_script("return document.body.dataset.total") == str(len(peers)))


def test_the_statistics_update_while_a_load_test_runs(gateway: Gateway, browser: Any) -> None:
    _open(browser, gateway, "main-mode", "statistics")
    loaded_at = browser.execute_script("return window.__ikecoreLoadedAt")

    def main_modes() -> int:
        values = browser.execute_script(
            "return [...document.querySelectorAll('#grid tbody tr')].filter(tr => "
            "tr.children[0].textContent === 'IKE Main Mode').map(tr => tr.children[1].textContent)")
        return int(values[0]) if values else -1

    before = _wait("IKE Main Mode", lambda: main_modes() if main_modes() >= 1000 else None)
    load = subprocess.Popen([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{gateway.port}", "--peers",
                             "400", "--psk", PSK, "--rate", "100", "--first-address", "127.3.0.1", "--json",
                             "--no-progress", "--max-seconds", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen = {before}
    try:
        deadline = time.monotonic() + 60
        while load.poll() is None and time.monotonic() < deadline:
            seen.add(main_modes())
            time.sleep(0.2)
        out, _ = load.communicate(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    assert json.loads(out)["established"] == 400
    _wait("every new SA counted", lambda: main_modes() == before + 400)
    during = sorted(v for v in seen if before < v < before + 400)
    assert during, seen  # values shown while the load test ran, without a reload
    assert browser.execute_script("return window.__ikecoreLoadedAt") == loaded_at
    # the chart of SAs established per second saw the run
    status, series = gateway.get("/api/series?seconds=120")
    assert status == 200 and max(series["sas_per_second"]) > 20
    assert sum(series["phase1_histogram"]) >= 400
    assert browser.execute_script("return Number(document.body.dataset.series)") >= 2


# --- safety and the gateway of workers, over plain HTTP --------------------------------------------


def test_no_secret_reaches_the_page(gateway: Gateway) -> None:
    status, description = gateway.get("/api/views")
    assert status == 200
    for mode, views in description["views"].items():
        for view, about in views.items():
            keys = [c["key"] for c in about["columns"]]
            assert not [k for k in keys if any(w in k for w in ("key", "nonce", "psk", "secret", "skeyid"))]
            status, answer = gateway.get(f"/api/view?mode={mode}&view={view}&columns=all&limit=5000")
            assert status == 200 and answer["ok"], answer
            assert PSK not in json.dumps(answer)
    for path in ("/", "/app.js", "/app.css"):
        status, body = gateway.get(path)
        assert status == 200 and PSK not in body
    status, answer = gateway.get("/api/view?mode=main-mode&view=security-associations", {})
    assert status == 200
    # read-only: nothing but GET
    request = urllib.request.Request(gateway.url + "/api/view", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_a_token_is_required_when_given_and_off_loopback(tmp_path: Path) -> None:
    token = "t0ken-" + "x" * 26
    token_file = tmp_path / "web.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    refused = subprocess.run([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
                              "--psk", PSK, "--web", f"127.0.0.1:{_free_port()}", "--web-token", str(token_file),
                              "--duration", "5"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--web-token" in refused.stderr and "chmod 600" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    bare = subprocess.run([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
                           "--psk", PSK, "--web", f"0.0.0.0:{_free_port()}", "--duration", "5"],
                          capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2 and "--web-token" in bare.stderr and len(bare.stderr.strip().splitlines()) == 1
    token_file.chmod(0o600)
    running = Gateway("--web-token", str(token_file))
    try:
        for path in ("/", "/api/views", "/api/view?mode=main-mode&view=statistics", "/api/series"):
            assert running.get(path)[0] == 401
            assert running.get(path, {"Authorization": "Bearer wrong-" + "x" * 27})[0] == 401
            assert running.get(path, {"Authorization": f"Bearer {token}"})[0] == 200
        assert running.get(f"/?token={token}")[0] == 200
        assert running.get("/?token=nope")[0] == 401
        if chromium.available() is None:  # the page keeps the token of its first load
            driver = chromium.browser()
            try:
                driver.get(f"{running.url}/?token={token}")
                _wait("the statistics of a token-protected page", lambda: driver.execute_script(
                    "return document.body.dataset.refreshes && Number(document.body.dataset.refreshes) >= 2"))
                assert "token" not in driver.current_url
            finally:
                driver.quit()
    finally:
        running.stop()


def test_a_gateway_of_two_workers_shows_the_whole_gateway(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    running = Gateway(workers=2)
    try:
        running.loadtest(200, "--concurrency", "50", "--first-address", "127.5.0.1")
        status, answer = running.get("/api/view?mode=main-mode&view=security-associations&columns=peer,worker"
                                     "&limit=1000")
        assert status == 200 and answer["total"] == 200
        assert {row["worker"] for row in answer["rows"]} == {0, 1}
        assert len({row["peer"] for row in answer["rows"]}) == 200
        assert [w["answered"] for w in answer["workers"]] == [True, True]
        browser.get(running.url + "/")
        _wait("200 SAs of both workers", lambda: browser.execute_script("return document.body.dataset.total") == "200")
        assert browser.find_element(By.ID, "count").text == "200 rows"
        assert "2 workers" in browser.find_element(By.ID, "status").text
        _open(browser, running, "main-mode", "statistics")
        _wait("the sums", lambda: "200" in browser.execute_script(
            "return [...document.querySelectorAll('#grid tbody tr')].filter(tr => "
            "tr.children[0].textContent === 'IKE Main Mode').map(tr => tr.children[1].textContent).join()"))
    finally:
        running.stop()
