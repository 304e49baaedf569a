"""Every example in README.md and docs/ runs: the documents cannot promise what the code
does not do.

The convention, visible in the documents themselves:

* A ```python block is a script: it runs in a scratch directory and must finish within
  ``PYTHON_SECONDS`` (loopback only).
* A ```console block is a shell transcript: each line that starts with ``$ `` is a command
  (a trailing backslash continues it on the next line), every other line is output shown
  to the reader. The commands of one document run in order, block after block, with bash
  in one scratch directory that holds this checkout's ``docs/`` and ``tests/`` (so paths
  read as from the top of the checkout) and with ``ikecore`` on PATH. Each must exit 0, or
  with the status its ``# exit N`` comment names, and print the output lines shown after it
  (``...`` stands for anything; the rest must appear in order on one line of its standard
  output or error, spaces squeezed). A command ending in ``&`` starts in the
  background; the next command waits until the UDP ``--listen`` addresses, the
  ``--metrics``/``--web`` ports and the ``--control`` socket it names answer. When the
  document ends it must still be running (it is then stopped: SIGTERM, then SIGKILL) or
  have exited with status 0.
* A ```toml block is a configuration: ``ikecore.config.config_from_dict`` accepts it (in a
  directory holding the certificate files it names: ``ca.pem``, ``gw.pem``, ``gw.key``).
  Every ``docs/examples/*.toml`` file is loaded with ``ikecore.config.load_config`` and
  served by a real ``ikecore serve`` on a loopback high port.
* A ```yaml block parses; a ```text block, or a fence without a language, is output, a
  formula or a drawing and is not run. Any other language (``sh``, ``bash`` ...) is an
  error: a shell example is a ```console block.
* ``<!-- not run: REASON -->`` on the line before a fence skips that block (for instance
  a package installation). This file counts them and keeps the number small.

Everything runs on loopback; the default control socket lives in the scratch directory
(``XDG_RUNTIME_DIR``), never under /run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ikecore.config import config_from_dict, load_config
from ikecore.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.toml"))
BIN = Path(sys.executable).parent
PYTHON_SECONDS = 30.0        # a python example should take a few seconds; this is the bound
COMMAND_SECONDS = 120.0      # one console command
READY_SECONDS = 20.0         # a background command's addresses must answer by then
MAX_NOT_RUN = 8              # blocks marked <!-- not run: ... --> in all the documents
LANGUAGES = {"python", "console", "toml", "yaml", "text", ""}

FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
EXPECTED_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
BACKGROUND = re.compile(r"\s&\s*(#[^'\"]*)?$")        # `cmd &` or `cmd &  # comment`


@dataclass(frozen=True)
class Block:
    document: str
    line: int                 # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None       # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown document, with their language and marker."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start, body = index, []
        index += 1
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        marker = NOT_RUN.match(lines[start - 1]) if start else None
        found.append(Block(path.relative_to(ROOT).as_posix(), start + 1, match.group(1),
                           "\n".join(body) + "\n", marker.group(1) if marker else None))
        index += 1
    return found


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks(document)]


def _of(language: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.language == language and b.not_run is None]


def commands(text: str) -> list[str]:
    """The ``$ `` commands of a console block, continuation lines joined."""
    return [command for command, _shown in transcript(text)]


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """Each ``$ `` command of a console block with the output lines shown after it."""
    out: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.startswith("$ "):
            if out and line.strip():
                out[-1][1].append(line)
            continue
        command = line[2:]
        while command.rstrip().endswith("\\") and index < len(lines):
            command = command.rstrip()[:-1].rstrip() + " " + lines[index].strip()
            index += 1
        out.append((command.strip(), []))
    return out


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def shown_but_missing(shown: list[str], output: str) -> list[str]:
    """The shown output lines the real output lacks. ``...`` stands for anything: the
    pieces between them must appear in order on one line of the output."""
    lines = [_squeeze(line) for line in output.splitlines()]
    missing = []
    for want in shown:
        pieces = [_squeeze(piece) for piece in want.split("...")]
        pieces = [piece for piece in pieces if piece]
        if pieces and not any(_in_order(pieces, line) for line in lines):
            missing.append(want)
    return missing


def _in_order(pieces: list[str], line: str) -> bool:
    at = 0
    for piece in pieces:
        found = line.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


# --- the scratch directory and the environment ------------------------------------------


def scratch(tmp_path: Path) -> Path:
    """A directory that looks like the top of the checkout for reading (docs/, tests/)."""
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    for name in ("docs", "tests"):
        (work / name).symlink_to(ROOT / name)
    (work / "run").mkdir(mode=0o700)
    return work


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IKECORE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["XDG_RUNTIME_DIR"] = str(work / "run")
    env["PYTHONPATH"] = str(ROOT / "python")
    env["IKECORE_FAST_PATH"] = os.environ.get("IKECORE_FAST_PATH", "1")
    return env


def make_certificates(directory: Path) -> None:
    """ca.pem, gw.pem and gw.key, as the certificate examples name them."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import pki
    finally:
        sys.path.pop(0)
    ca = pki.make_ca("ikecore docs CA")
    ca.write(directory, "ca")
    pki.issue(ca, "gw.example.net", dns=("gw.example.net",)).write(directory, "gw")


# --- waiting for a background command ---------------------------------------------------

ENDPOINT = re.compile(r"--(listen|metrics|web|control)(?:[ =](\S+))?")


def _endpoint(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    return (host, int(port)) if port.isdigit() and host else None


def _udp_bound(address: tuple[str, int]) -> bool:
    """Some socket is bound to the UDP port (read from /proc: a probe bind could race the
    process it waits for)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(row.split()[1].rsplit(":", 1)[1], 16) == address[1] for row in rows):
            return True
    return False


def _tcp_listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def wait_ready(command: str, process: subprocess.Popen[bytes], work: Path, env: dict[str, str]) -> None:
    """Wait until the addresses and the control socket the command names answer."""
    checks = []
    for flag, value in ENDPOINT.findall(command):
        if flag == "control":
            if value and not value.startswith("-"):
                path = Path(value) if value.startswith("/") else work / value
            else:
                path = Path(env["XDG_RUNTIME_DIR"]) / "ikecore" / "control.sock"
            checks.append(lambda path=path: path.exists())
        elif (address := _endpoint(value)) is not None:
            probe = _udp_bound if flag == "listen" else _tcp_listening
            checks.append(lambda address=address, probe=probe: probe(address))
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"background command exited with {process.returncode}: {command}")
        if all(check() for check in checks):
            if not checks:
                time.sleep(1.0)
            return
        time.sleep(0.1)
    raise AssertionError(f"background command not ready after {READY_SECONDS:.0f} s: {command}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --- the tests ----------------------------------------------------------------------------


def test_documents_have_examples_of_every_kind() -> None:
    assert {b.language for b in ALL_BLOCKS if b.not_run is None} >= {"python", "console", "toml"}
    assert len(_of("console")) >= 10 and len(_of("python")) >= 3 and EXAMPLES


def test_every_block_says_what_it_is() -> None:
    """A block is one of the known kinds; ```sh or ```bash would go unchecked."""
    odd = [f"{b.name} ```{b.language}" for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not odd, f"use one of {sorted(LANGUAGES)}: {odd}"


def test_few_blocks_are_not_run() -> None:
    skipped = [f"{b.name}: {b.not_run}" for b in ALL_BLOCKS if b.not_run is not None]
    assert len(skipped) <= MAX_NOT_RUN, skipped


def test_the_convention_reads_commands() -> None:
    """The reader of console blocks, on a known block."""
    text = "$ ikecore serve --listen 127.0.0.1:1 \\\n    --psk x &\noutput\n$ ikecore monitor  # exit 2\n"
    assert commands(text) == ["ikecore serve --listen 127.0.0.1:1 --psk x &", "ikecore monitor  # exit 2"]
    assert EXPECTED_EXIT.search(commands(text)[1]).group(1) == "2"
    assert BACKGROUND.search("ikecore serve &  # the gateway") and BACKGROUND.search(commands(text)[0])
    assert not BACKGROUND.search("a && b") and not BACKGROUND.search("ikecore monitor  # exit 2")
    assert transcript(text)[0][1] == ["output"] and transcript(text)[1][1] == []
    printed = "Peer       State\n127.1.0.7  ESTABLISHED\n"
    assert shown_but_missing(["127.1.0.7 ESTABLISHED", "Peer ... State", "..."], printed) == []
    assert shown_but_missing(["127.1.0.8 ESTABLISHED"], printed) == ["127.1.0.8 ESTABLISHED"]
    assert shown_but_missing(["State ... Peer"], printed) == ["State ... Peer"]


@pytest.mark.parametrize("block", _of("python"), ids=lambda b: b.name)
def test_python_example_runs(block: Block, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    script = work / "example.py"
    script.write_text(block.text)
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=environment(work),
                          capture_output=True, timeout=PYTHON_SECONDS)
    assert done.returncode == 0, f"{block.name}:\n{done.stdout.decode()}{done.stderr.decode()}"


CONSOLE_DOCUMENTS = sorted({b.document for b in _of("console")})


@pytest.mark.parametrize("document", CONSOLE_DOCUMENTS)
def test_console_examples_run(document: str, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    env = environment(work)
    background: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for block in (b for b in _of("console") if b.document == document):
            for command, shown in transcript(block.text):
                if (ampersand := BACKGROUND.search(command)) is not None:
                    log = (tmp_path / f"background-{len(background)}.log").open("wb")
                    process = subprocess.Popen(["bash", "-c", command[:ampersand.start()]], cwd=work, env=env,
                                               stdout=log, stderr=subprocess.STDOUT, process_group=0)
                    log.close()
                    background.append((command, process))
                    wait_ready(command, process, work, env)
                    continue
                expected = EXPECTED_EXIT.search(command)
                done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                                      timeout=COMMAND_SECONDS, stdin=subprocess.DEVNULL)
                want = int(expected.group(1)) if expected else 0
                output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
                assert done.returncode == want, (
                    f"{block.name}: `{command}` exited {done.returncode}, not {want}:\n{output[-6000:]}")
                missing = shown_but_missing(shown, output)
                assert not missing, f"{block.name}: `{command}` did not print {missing}:\n{output[-6000:]}"
        for number, (command, process) in enumerate(background):
            assert process.poll() in (None, 0), (f"{document}: background `{command}` exited {process.returncode}:\n"
                                            f"{(tmp_path / f'background-{number}.log').read_text()[-3000:]}")
    finally:
        for _command, process in background:
            stop(process)


@pytest.mark.parametrize("block", _of("toml"), ids=lambda b: b.name)
def test_toml_example_is_a_valid_configuration(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_certificates(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = config_from_dict(tomllib.loads(block.text))
    assert config.ike_policies and config.esp_policies


#: Each table of the configuration file, as ``config_from_dict`` names it in errors, and the
#: heading of its section in docs/configuration.md.
TABLES = {
    "gateway": ({"gateway": {"?": 1}}, "### `[gateway]`"),
    "ike_policy": ({"ike_policy": {"x": {"?": 1}}}, "### `[ike_policy.NAME]`"),
    "esp_policy": ({"esp_policy": {"x": {"?": 1}}}, "### `[esp_policy.NAME]`"),
    "filter": ({"filter": [{"?": 1}]}, "### `[[filter]]`"),
    "timing": ({"timing": {"?": 1}}, "### `[timing]`"),
    "flood": ({"flood": {"?": 1}}, "### `[flood]`"),
    "limits": ({"limits": {"?": 1}}, "### `[limits]`"),
    "metrics": ({"metrics": {"?": 1}}, "### `[metrics]`"),
}


def _allowed(data: dict[str, object]) -> list[str]:
    """The keys the configuration reader accepts where ``data`` puts an unknown one (its
    error message lists them)."""
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data)
    message = str(raised.value)
    assert "unknown key; allowed: " in message, message
    return message.split("allowed: ", 1)[1].split(", ")


def test_the_configuration_reference_has_every_key() -> None:
    """docs/configuration.md has a table row for every key the reader accepts, in the
    section of its table, and a section for every table: a new key cannot go undocumented."""
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert sorted(_allowed({"?": 1})) == sorted(TABLES)
    for table, (data, heading) in TABLES.items():
        assert heading in reference, heading
        section = reference.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        missing = [key for key in _allowed(data) if f"| `{key}` |" not in section]
        assert not missing, f"{heading}: no row for {missing}"


@pytest.mark.parametrize("block", _of("yaml"), ids=lambda b: b.name)
def test_yaml_example_parses(block: Block) -> None:
    assert yaml.safe_load(block.text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_file_serves(path: Path, tmp_path: Path) -> None:
    """load_config accepts the file (copied 0600, as a file holding a key must be) and a real
    `ikecore serve --config` binds it on a loopback high port and keeps running."""
    make_certificates(tmp_path)
    config_file = tmp_path / path.name
    shutil.copyfile(path, config_file)
    config_file.chmod(0o600)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load_config(str(config_file))
    finally:
        os.chdir(cwd)
    assert config.filters, f"{path.name} defines no [[filter]]"
    port = _free_udp_port()
    env = environment(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([str(BIN / "ikecore"), "serve", "--config", str(config_file),
                                "--listen", f"127.0.0.1:{port}", "--duration", "30"],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                               process_group=0)
    log.close()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not _udp_bound(("127.0.0.1", port)):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, f"{path.name}: serve did not bind 127.0.0.1:{port}"
            time.sleep(0.1)
        time.sleep(0.5)
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
    finally:
        stop(process)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
