"""The wheel `make wheel` builds installs and runs without this checkout, Rust or libssl.

The wheel is built once per test run (``make wheel``; its OpenSSL build is cached in
``target/wheel``) or taken from ``$IKECORE_WHEEL``. It is installed into a fresh virtualenv
with ``pip install --no-index`` (nothing from the network, nothing from this checkout);
the runtime dependencies (cryptography, prometheus_client, orjson, bcrypt, PyYAML) are
pure dependencies of the wheel and come from the test's own environment through a
``.pth`` line placed after the new environment's own packages. The new environment then
runs ``ikecore --help`` and two engines negotiating, with ``python -I`` (no PYTHONPATH,
no current directory on the path), and must load ikecore and its extension from itself.
The extension must not link libssl or libcrypto (``ldd`` and the ELF NEEDED entries).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1500)          # the first build compiles OpenSSL

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / "target" / "wheel" / "dist"
MANYLINUX = re.compile(r"-cp311-abi3-manylinux[_0-9a-z.]*_x86_64\.whl$")

TWO_ENGINES = """
import ikecore, ikecore._core
from ikecore import events
from ikecore.config import config_from_flags
from ikecore.engine import Engine

config = config_from_flags(psk="a long random secret", listen=())
alice, bob = Engine(config), Engine(config)
alice.initiate(("192.0.2.2", 500), local=("192.0.2.1", 500), now=0.0)
for _ in range(20):
    moved = 0
    for sender, receiver in ((alice, bob), (bob, alice)):
        for data, to, source in sender.datagrams_to_send():
            receiver.receive_datagram(data, remote=source, local=to, now=0.0)
            moved += 1
    if not moved:
        break
found = []
for engine in (alice, bob):
    while (event := engine.next_event()) is not None:
        if isinstance(event, (events.Phase1Established, events.Phase2Established)):
            found.append(type(event).__name__)
print(ikecore.__file__)
print(ikecore._core.__file__)
print(" ".join(sorted(found)))
"""


@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get("IKECORE_WHEEL")
    if given:
        return Path(given)
    if shutil.which("cargo") is None:
        pytest.skip("building the wheel needs cargo (or set IKECORE_WHEEL to a built wheel)")
    done = subprocess.run(["make", "-C", str(ROOT), "wheel"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = sorted(WHEEL_DIR.glob("ikecore-*.whl"))
    assert len(built) == 1, built
    return built[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed from the file alone."""
    target = tmp_path_factory.mktemp("wheel-venv") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(target)], check=True, timeout=300)
    python = target / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps",
                           "--disable-pip-version-check", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies only: a directory named in a .pth is appended after the new
    # environment's own packages, and .pth files inside it (this checkout's editable
    # install among them) are not read.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return target


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("IKECORE_")}


def test_the_wheel_is_manylinux_and_abi3(wheel: Path) -> None:
    assert MANYLINUX.search(wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "ikecore/_core.abi3.so" in names and "ikecore/py.typed" in names
    assert any(n.startswith("ikecore/monitor/web_assets/") for n in names)
    assert not any(n.startswith(("tests/", "rust/")) for n in names)
    assert "Project-URL: Source, https://github.com/ikecore/ikecore" in metadata
    assert "Classifier: Programming Language :: Rust" in metadata


def test_ikecore_runs_from_the_fresh_virtualenv(venv: Path, tmp_path: Path) -> None:
    help_text = subprocess.run([str(venv / "bin" / "ikecore"), "--help"], cwd=tmp_path, env=_clean_env(),
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    for command in ("serve", "connect", "monitor", "decode", "loadtest"):
        assert command in help_text.stdout
    script = tmp_path / "two_engines.py"
    script.write_text(TWO_ENGINES)
    done = subprocess.run([str(venv / "bin" / "python"), "-I", str(script)], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    package, extension, found = done.stdout.splitlines()
    assert package.startswith(str(venv)) and extension.startswith(str(venv)), done.stdout
    assert not package.startswith(str(ROOT))
    assert found.split() == ["Phase1Established"] * 2 + ["Phase2Established"] * 2


def test_the_extension_links_no_openssl(venv: Path) -> None:
    extension = next((venv / "lib").glob("python3*/site-packages/ikecore/_core*.so"))
    ldd = subprocess.run(["ldd", str(extension)], capture_output=True, text=True, timeout=60)
    assert ldd.returncode == 0, ldd.stderr
    assert "libc.so" in ldd.stdout                       # the tool read it
    assert "libssl" not in ldd.stdout and "libcrypto" not in ldd.stdout, ldd.stdout
    needed = _needed(extension.read_bytes())
    assert needed and not [n for n in needed if "ssl" in n or "crypto" in n], needed


def _needed(elf: bytes) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object."""
    import struct

    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)             # SHT_DYNAMIC
    strtab = sections[dynamic[6]]                                # sh_link: its string table
    names = []
    for offset in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", elf, offset)
        if tag == 0:
            break
        if tag == 1:                                             # DT_NEEDED
            start = strtab[4] + value
            names.append(elf[start:elf.index(b"\0", start)].decode())
    return names
