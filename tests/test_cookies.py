"""ikecore._core.CookieTable: SA lookup by cookie pair, half-open entries, first-message
retransmit detection and responder cookies (RFC 2408 sections 2.5.3 and 3.1)."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikecore._core import CookieTable
from ikecore.errors import InvalidCookie, PayloadMalformed

ZERO = bytes(8)


def header(cky_i: bytes, cky_r: bytes, message_id: int = 0, body: bytes = b"") -> bytes:
    """A real ISAKMP header (RFC 2408 3.1): cookies, next payload SA, version 1.0,
    Identity Protection, no flags, message ID, length."""
    return cky_i + cky_r + struct.pack("!BBBBII", 1, 0x10, 2, 0, message_id, 28 + len(body)) + body


def test_insert_get_remove_len() -> None:
    t = CookieTable()
    assert len(t) == 0 and t.half_open == 0
    t.insert(b"I" * 8, b"R" * 8, 1)
    t.insert(b"J" * 8, ZERO, 2)
    t.insert(b"J" * 8, ZERO, 3)  # replaces, still one half-open entry
    assert len(t) == 2 and t.half_open == 1
    assert t.get(b"I" * 8, b"R" * 8) == 1
    assert t.get(b"J" * 8, ZERO) == 3
    assert t.get(b"I" * 8, ZERO) is None
    assert t.remove(b"J" * 8, ZERO) is True
    assert t.remove(b"J" * 8, ZERO) is False
    assert len(t) == 1 and t.half_open == 0
    t.insert(b"K" * 8, b"L" * 8, (1 << 64) - 1)  # handles are full u64
    assert t.get(b"K" * 8, b"L" * 8) == (1 << 64) - 1
    assert "len=2" in repr(t)


def test_lookup_by_datagram_and_half_open_fallback() -> None:
    t = CookieTable()
    cky_i, cky_r = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")
    t.insert(cky_i, ZERO, 10)  # initiator before message 2
    assert t.lookup(header(cky_i, ZERO)) == 10  # our own message 1 (or a retransmission)
    assert t.lookup(header(cky_i, cky_r)) == 10  # message 2 names the new CKY-R
    assert t.lookup(header(cky_r, cky_i)) is None
    t.promote(cky_i, cky_r, 11)
    assert len(t) == 1 and t.half_open == 0
    assert t.lookup(header(cky_i, cky_r, 5, b"\x00" * 40)) == 11
    assert t.lookup(header(cky_i, b"X" * 8)) is None  # no half-open fallback any more
    assert t.get(cky_i, ZERO) is None


def test_promote_without_half_open_entry_and_counts() -> None:
    t = CookieTable()
    t.promote(b"A" * 8, b"B" * 8, 4)  # responder: full pair straight away
    assert t.get(b"A" * 8, b"B" * 8) == 4 and t.half_open == 0 and len(t) == 1


def test_bad_sizes() -> None:
    t = CookieTable()
    with pytest.raises(PayloadMalformed):
        t.lookup(b"\x00" * 15)
    assert t.lookup(b"\x00" * 16) is None
    for bad in (b"", b"1234567", b"123456789"):
        with pytest.raises(InvalidCookie):
            t.insert(bad, ZERO, 1)
        with pytest.raises(InvalidCookie):
            t.get(b"A" * 8, bad)
        with pytest.raises(InvalidCookie):
            t.remove(bad, bad)
        with pytest.raises(InvalidCookie):
            t.promote(b"A" * 8, bad, 1)
    with pytest.raises(OverflowError):
        t.insert(b"A" * 8, ZERO, -1)
    assert len(t) == 0


def test_first_message_retransmit_detection() -> None:
    t = CookieTable()
    source = bytes([127, 0, 0, 2]) + (500).to_bytes(2, "big")
    message1 = header(b"C" * 8, ZERO, body=b"\x00\x00\x00\x38" + b"sa" * 26)
    assert t.find_first(source, message1) is None
    t.remember_first(source, message1, 42)
    assert t.first_count == 1
    assert t.find_first(source, message1) == 42  # identical retransmission
    other_port = bytes([127, 0, 0, 2]) + (501).to_bytes(2, "big")
    assert t.find_first(other_port, message1) is None  # same bytes, other peer
    changed = message1[:-1] + b"x"
    assert t.find_first(source, changed) is None  # a different (new) first message
    assert t.forget_first(source, message1) is True
    assert t.forget_first(source, message1) is False
    assert t.find_first(source, message1) is None and t.first_count == 0


def test_first_message_digests_are_per_table() -> None:
    # Keyed: another table (another key) does not know the message.
    a, b = CookieTable(), CookieTable()
    a.remember_first(b"src", b"datagram", 1)
    assert b.find_first(b"src", b"datagram") is None


def test_make_cookie_unique_nonzero_unpredictable() -> None:
    t = CookieTable()
    peer, local = bytes([192, 0, 2, 1, 1, 244]), bytes([192, 0, 2, 9, 1, 244])
    cookies = [t.make_cookie(peer, local) for _ in range(20000)]
    assert all(len(c) == 8 and c != ZERO for c in cookies)
    assert len(set(cookies)) == len(cookies)
    # Bits look uniform: each of the 64 bit positions is set in 40-60% of cookies.
    for bit in range(64):
        ones = sum((int.from_bytes(c, "big") >> bit) & 1 for c in cookies)
        assert 0.4 < ones / len(cookies) < 0.6
    # Two tables (two secrets) never agree, even for the same inputs and counter.
    assert CookieTable().make_cookie(peer, local) != CookieTable().make_cookie(peer, local)


def test_rotate_secret_changes_the_cookie_stream() -> None:
    t1, t2 = CookieTable(), CookieTable()
    before = {t1.make_cookie(b"p", b"l") for _ in range(100)}
    t1.rotate_secret()
    after = {t1.make_cookie(b"p", b"l") for _ in range(100)}
    assert not before & after
    assert len(t2.make_cookie(b"p", b"l")) == 8


def test_memory_accounting_grows() -> None:
    t = CookieTable()
    empty = t.memory_bytes
    for i in range(1000):
        t.insert(i.to_bytes(8, "big"), (i + 1).to_bytes(8, "big"), i)
    assert len(t) == 1000
    per_entry = (t.memory_bytes - empty) / 1000
    assert 25 <= per_entry <= 80  # 24-byte entry + control byte, with hash-table slack


def test_concurrent_use_from_threads() -> None:
    t = CookieTable()

    def worker(base: int) -> None:
        for i in range(2000):
            cky_i = (base * 100000 + i).to_bytes(8, "big")
            t.insert(cky_i, ZERO, i)
            t.promote(cky_i, b"R" * 8, i + 1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(t) == 8000 and t.half_open == 0
    assert t.lookup(header((3 * 100000 + 5).to_bytes(8, "big"), b"R" * 8)) == 6




@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_lookup_any_bytes(datagram: bytes) -> None:
    t = CookieTable()
    t.insert(b"\x00" * 8, ZERO, 1)
    if len(datagram) < 16:
        with pytest.raises(PayloadMalformed):
            t.lookup(datagram)
    else:
        expected = 1 if datagram[:8] == bytes(8) else None
        assert t.lookup(datagram) == expected
