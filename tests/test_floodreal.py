"""Real UDP on loopback: 50,000 spoofed message 1 per second against a separate
``ikecore serve`` process while 1,000 legitimate peers negotiate Main Mode and Quick Mode
(tests/floodreal.py runs the three processes; see its docstring for the accounting).

Truth is independent of the gateway's own story where it can be: the flood generator
counts what ``sendmmsg`` accepted, the legitimate peers count what they sent and what
established, the kernel's drop counter comes from /proc/net/udp, RSS from /proc.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floodreal  # noqa: E402
from ikecore.gateway import frontdoor  # noqa: E402

RATE = 50_000
SECONDS = 12.0
PEERS = 1000


@pytest.mark.skipif(not frontdoor.available() or not Path("/proc/net/udp").exists(),
                    reason="needs the Rust receive path and /proc (Linux)")
@pytest.mark.timeout(120)
def test_50k_spoofed_message1_per_second_while_1000_peers_establish() -> None:
    result = floodreal.run(rate=RATE, seconds=SECONDS, peers=PEERS, wall_limit=100.0)
    flood, legit, gw, acct = result["flood"], result["legit"], result["gateway"], result["accounting"]
    # the flood really ran at the rate (bounded: exactly rate x seconds at most)
    assert flood["sent"] <= RATE * SECONDS
    assert flood["sent"] >= 0.9 * RATE * SECONDS, flood     # a starved generator may fall a little behind
    # at least 99% of the legitimate peers established Main Mode and Quick Mode
    assert legit["established"] >= 0.99 * PEERS, legit
    assert legit["quick_modes"] >= 0.99 * PEERS, legit
    assert gw["ike_main_mode"] >= legit["established"]
    # every datagram sent to the gateway was read by it or dropped by the kernel in front of it
    assert acct["sent_to_gateway"] == acct["read_plus_dropped"], result
    # every datagram read was answered in Rust, handled by the express lane or handed to the engine
    assert gw["received"] == gw["stateless_replies_rust"] + gw["express"] + gw["to_python"], gw
    # the monitor's statistics carry the kernel drops as Receive Failures
    assert gw["kernel_drops_monitor"] == gw["kernel_drops_proc"]
    assert gw["receive_failures"] >= gw["kernel_drops_proc"]
    # the flood was answered statelessly, mostly without entering Python
    # the flood was answered statelessly without entering Python: the engine saw the
    # legitimate traffic and at most 1% of the flood (the first offers, stateful mode)
    assert gw["to_python"] <= legit["datagrams_sent"] + 0.01 * flood["sent"], gw
    assert gw["stateless_replies_rust"] >= gw["received"] - gw["to_python"] - gw["express"]
    assert gw["stateless_cookies_verified"] >= legit["established"]
    # ... and the generator really got those replies (or its own kernel queue dropped them)
    assert flood["replies"] + flood["receive_drops"] >= gw["stateless_replies_rust"] - legit["datagrams_sent"], result
    # the stated memory bound
    assert gw["rss_growth"] <= floodreal.RSS_GROWTH_BOUND, gw
