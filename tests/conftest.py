"""Shared pytest configuration.

Interop rule: a test that needs a real peer or tool (strongSwan's charon, ike-scan,
tshark) is *skipped* with the reason when the tool is unusable on this machine (a
laptop), but *fails* when the environment sets ``IKECORE_REQUIRE_INTEROP=1`` (CI
does, after installing everything and running ``tests/interop/build-strongswan.sh``).

Two ways to ask for tools:

    @pytest.mark.interop("charon", "tshark")
    def test_something(): ...

    def test_other(require_interop):
        require_interop("ike-scan")

Tool names: ``charon`` (fake-kernel build, Quick Mode completes), ``charon-netlink``
(Debian's charon), ``charon-libipsec``, ``ike-scan``, ``tshark``, ``netns``, ``prometheus``
(with ``promtool``), ``chromium`` (headless, with ``chromedriver`` and Selenium).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from interop import charon as _charon
from interop import chromium as _chromium
from interop import ikescan as _ikescan
from interop import netns as _netns
from interop import prometheus as _prometheus
from interop import tshark as _tshark

_CHECKS: dict[str, Callable[[], str | None]] = {
    "charon": lambda: _charon.available("fake"),
    "charon-netlink": lambda: _charon.available("netlink"),
    "charon-libipsec": lambda: _charon.available("libipsec"),
    "ike-scan": _ikescan.available,
    "tshark": _tshark.available,
    "netns": _netns.available,
    "prometheus": _prometheus.available,
    "chromium": _chromium.available,
}


def interop_required() -> bool:
    """True when a missing interop tool must fail the test (CI)."""
    return os.environ.get("IKECORE_REQUIRE_INTEROP", "") == "1"


def require_interop_tools(*tools: str) -> None:
    """Skip (laptop) or fail (``IKECORE_REQUIRE_INTEROP=1``) unless every tool is usable."""
    for tool in tools:
        check = _CHECKS.get(tool)
        if check is None:
            raise ValueError(f"unknown interop tool {tool!r}; known: {sorted(_CHECKS)}")
        reason = check()
        if reason is None:
            continue
        message = f"interop tool {tool} unusable: {reason}"
        if interop_required():
            pytest.fail(message + " (IKECORE_REQUIRE_INTEROP=1)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def require_interop() -> Callable[..., None]:
    """``require_interop("charon", ...)``: skip or fail as the module docstring says."""
    return require_interop_tools


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="interop"):
        if marker.args:
            require_interop_tools(*marker.args)
