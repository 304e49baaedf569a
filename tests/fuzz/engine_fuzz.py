"""Coverage-guided fuzzing of the engine (atheris): datagram sequences into deep states.

Design note
-----------
libFuzzer (through atheris) mutates a byte string; the harness reads it with a
``FuzzedDataProvider`` as a *program*: first a scenario, then up to ``MAX_OPS``
operations. Every input starts from scratch and is deterministic, so a crash file
replays exactly:

* Scenarios. Two engines (initiator and responder, PSK, ``aes128-sha256-ecp256``)
  run a real negotiation step by step up to a chosen point: nothing yet (a fresh
  responder), after MM1/MM2, after MM4 (both sides hold keys), established with Quick
  Mode 1 in flight, fully established (ISAKMP + IPsec SA), and the same for Aggressive
  Mode. Random bytes come from a seeded source, the DH key pairs are fixed
  (``dh.keypair(group, private)``) and so are the responder cookies (``_Cookies``) and
  SPIs (``_Driver``), so the messages of every run are the same bytes and encrypted
  messages decrypt: the fuzzer reaches the states behind the encryption.
* Operations (the datagram goes to the initiator or to the responder, as the input
  says): ``raw`` bytes; ``header``: the 28-byte header of a real message of the
  negotiation (its cookies) followed by fuzzed bytes; ``sealed``: a fuzzed payload chain
  encrypted with the real keys of the SA (from a copy of the receiver's IV chain, so it
  decrypts), with a fuzzed exchange type, next payload and Message ID; ``hashed``: the same
  with a correct HASH(1) in front (Quick Mode and informational messages the peer could
  really send); ``replay`` of a real datagram of the negotiation; ``deliver`` / ``drop``
  the next datagram the engines really sent; ``time`` moves the clock and fires timers.
* Seeds: every ISAKMP datagram of the real captures in ``tests/vectors/captures``
  (strongSwan, ike-scan) as a ``raw`` operation in every scenario, the clean
  negotiations themselves (``deliver`` until quiet), and the decrypted payload chains of
  their encrypted messages as ``sealed`` and ``hashed`` operations (a valid MM5/MM6/AM3,
  a new Quick Mode 1 on an established SA, ...), written by ``--make-corpus``.

Oracle (a violation raises, which libFuzzer reports as a crash and saves the input):
nothing raises out of ``receive_datagram``/``handle_timer``/``datagrams_to_send``/
``next_event``; no datagram reaches the engine's "internal error" path; an SA that was
established before the hostile input keeps its cookies and keys, and leaves the engine
only after an authenticated message (``hashed``) or a move of the clock; the monitor's
ISADB List Size equals the engine's SA count and no statistic is negative. Time per
input is bounded by libFuzzer's ``-timeout`` (``make fuzz`` passes 10 s: a slower input
is a hang and a finding).

Runs::

    make fuzz FUZZ_SECONDS=10                                 # CI: every target, bounded
    .venv/bin/python tests/fuzz/engine_fuzz.py --make-corpus fuzz/corpus/engine
    nice -n 10 .venv/bin/python tests/fuzz/engine_fuzz.py fuzz/corpus/engine \\
        -runs=10000000 -timeout=10 -max_len=4096 -artifact_prefix=fuzz/artifacts/engine-
    .venv/bin/python tests/fuzz/engine_fuzz.py CRASH_FILE    # replay one input

A crash found becomes a regression test: its input goes to ``tests/fuzz/regressions/``,
which tests/test_engine_fuzz.py replays (with every seed) through the harness; without
atheris the harness reads inputs with ``_Provider``, byte-compatible with atheris's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent

try:
    import atheris
except ImportError:  # the regression tests replay inputs without atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["ikecore"]):
        from ikecore import dh, keymat, wire
        from ikecore import events as ev
        from ikecore.config import Config, Timing, config_from_flags
        from ikecore.driver import DriverError, MemoryDriver
        from ikecore.engine.core import Engine
        from ikecore.monitor.counters import Monitor
        from ikecore.sa import Phase1State
else:
    from ikecore import dh, keymat, wire
    from ikecore import events as ev
    from ikecore.config import Config, Timing, config_from_flags
    from ikecore.driver import DriverError, MemoryDriver
    from ikecore.engine.core import Engine
    from ikecore.monitor.counters import Monitor
    from ikecore.sa import Phase1State

INITIATOR = ("127.0.0.2", 500)
RESPONDER = ("127.0.0.1", 500)
START = 1000.0
MAX_OPS = 16
MAX_DATAGRAM = 2048

#: (aggressive, datagrams of the clean negotiation delivered before the fuzzed operations).
#: Main Mode: MM1..MM6 are datagrams 1..6, QM1..QM3 are 7..9; Aggressive: AM1..AM3 1..3.
SCENARIOS: tuple[tuple[bool, int], ...] = (
    (False, 0),   # a fresh responder (and an initiator that has sent MM1)
    (False, 1),   # the responder has answered MM1 with MM2
    (False, 2),   # the initiator has MM2 (and sends MM3)
    (False, 4),   # after MM4: both sides have SKEYID and the phase 1 IV
    (False, 5),   # the responder has MM5 (established on its side)
    (False, 6),   # both established, Quick Mode 1 on its way
    (False, 7),   # Quick Mode 2 on its way
    (False, 9),   # ISAKMP SA and IPsec SA on both sides
    (True, 0),
    (True, 1),    # AM2 on its way
    (True, 3),    # Aggressive Mode established, Quick Mode starting
    (True, 6),    # both established with an IPsec SA
)

EXCHANGES = (wire.ExchangeType.IDENTITY_PROTECTION, wire.ExchangeType.AGGRESSIVE, wire.ExchangeType.INFORMATIONAL,
             wire.ExchangeType.QUICK_MODE)


class Finding(AssertionError):
    """An oracle violation: libFuzzer saves the input."""


def _config(aggressive: bool) -> Config:
    timing = Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=30.0)
    return config_from_flags(psk="fuzz-secret", ike="aes128-sha256-ecp256", esp="aes128-sha256", listen=(),
                             timing=timing, aggressive=aggressive)


_CONFIGS = {aggressive: _config(aggressive) for aggressive in (False, True)}
def _fixed_keypairs(side: int) -> Any:
    """A DH key-pair factory with a fixed private value per (side, group): deterministic
    runs (a key pair is single-use, so each call makes a new one from the same value)."""
    def factory(group: int) -> Any:
        return dh.keypair(group, bytes([0x11 * (side + 1)]) * dh.secret_size(group))
    return factory


def _counter_random(seed: int) -> Any:
    """A cheap deterministic byte source (cookies, nonces, Message IDs, SPIs)."""
    state = [seed]

    def random_bytes(size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            state[0] = (state[0] * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
            out += state[0].to_bytes(8, "big")
        return bytes(out[:size])
    return random_bytes


class _Cookies:
    """The engine's cookie table with a deterministic ``make_cookie`` (the Rust table keys its
    responder cookies with a secret from the OS): the same input gives the same run."""

    def __init__(self, table: Any, random_bytes: Any) -> None:
        self._table = table
        self._random = random_bytes

    def make_cookie(self, peer: bytes, local: bytes) -> bytes:
        return self._random(8)

    def rotate_secret(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._table)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class _Driver(MemoryDriver):
    """The in-memory driver with SPIs from the seeded source (it draws them from the OS)."""

    def __init__(self, random_bytes: Any) -> None:
        super().__init__()
        self._random = random_bytes

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        for _attempt in range(64):
            spi = self._random(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self.inbound:
                self.inbound[spi] = None
                return spi
        raise DriverError("no free SPI")


class World:
    """Two engines, their monitors and the datagrams in flight, on a fake clock."""

    def __init__(self, aggressive: bool) -> None:
        self.now = START
        config = _CONFIGS[aggressive]
        self.engines = {
            "initiator": Engine(config, driver=_Driver(_counter_random(11)), random=_counter_random(1),
                                keypair=_fixed_keypairs(0), now=START),
            "responder": Engine(config, driver=_Driver(_counter_random(12)), random=_counter_random(2),
                                keypair=_fixed_keypairs(1), now=START),
        }
        for number, engine in enumerate(self.engines.values()):
            engine._cookies = _Cookies(engine._cookies, _counter_random(100 + number))
        self.monitors = {side: Monitor() for side in self.engines}
        self.addresses = {"initiator": (INITIATOR, RESPONDER), "responder": (RESPONDER, INITIATOR)}
        self.in_flight: list[tuple[str, bytes]] = []   # (receiving side, datagram)
        self.sent: list[tuple[str, bytes]] = []        # every real datagram, by receiving side
        self.engines["initiator"].initiate(RESPONDER, local=INITIATOR, now=self.now)
        self.collect()

    def collect(self) -> None:
        for side, engine in self.engines.items():
            other = "responder" if side == "initiator" else "initiator"
            for data, _remote, _local in engine.datagrams_to_send():
                self.in_flight.append((other, data))
                self.sent.append((other, data))
            monitor = self.monitors[side]
            while (event := engine.next_event()) is not None:
                monitor.observe(event)
                if isinstance(event, ev.InvalidPacketReceived) and event.reason.startswith("internal"):
                    raise Finding(f"{side}: {event.reason}")

    def inject(self, side: str, data: bytes) -> None:
        local, remote = self.addresses[side]
        self.engines[side].receive_datagram(data, remote, local, self.now)
        self.collect()

    def deliver_next(self) -> bool:
        if not self.in_flight:
            return False
        side, data = self.in_flight.pop(0)
        self.now += 0.01
        self.inject(side, data)
        return True

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for engine in self.engines.values():
            timer = engine.get_timer()
            if timer is not None and timer <= self.now:
                engine.handle_timer(self.now)
        self.collect()

    def established(self, side: str) -> dict[int, tuple[bytes, bytes, bytes]]:
        return {sa.handle: (sa.initiator_cookie + sa.responder_cookie, sa.skeyid.skeyid_d, sa.skeyid.skeyid_a)
                for sa in self.engines[side].sas()
                if sa.state is Phase1State.ESTABLISHED and sa.skeyid is not None}

    def keyed_sa(self, side: str) -> Any:
        """An SA with keys for sealing what goes to ``side``: its own (both ends hold the
        same keys, and its own IV chain is the one it decrypts with), else the peer's."""
        other = "responder" if side == "initiator" else "initiator"
        for engine in (self.engines[side], self.engines[other]):
            for sa in engine.sas():
                if sa.crypto is not None and sa.skeyid is not None and sa.skeyid.skeyid_a:
                    return sa
        return None


def _seal(sa: Any, exchange_type: int, next_payload: int, message_id: int, plaintext: bytes,
          hashed: bool) -> bytes:
    """Encrypt ``plaintext`` under ``sa``'s keys from a copy of its IV chain."""
    crypto = sa.crypto
    copy = keymat.CryptoState(crypto.cipher_name, crypto._key, crypto._hash_name, crypto.iv(0))
    copy._ivs = dict(crypto._ivs or {})  # the phase 1 chain came with iv(0); the others, if any
    if hashed:
        digest = keymat.informational_hash(sa.hash_name, sa.skeyid.skeyid_a, message_id, plaintext)
        plaintext = bytes([next_payload, 0]) + (4 + len(digest)).to_bytes(2, "big") + digest + plaintext
        next_payload = wire.PayloadType.HASH
    body = copy.encrypt(message_id, plaintext) if plaintext else b""   # an empty E-flagged body
    return wire.Message(sa.initiator_cookie, sa.responder_cookie, exchange_type, message_id=message_id,
                        flags=wire.Flag.ENCRYPTION, next_payload=next_payload, body=body).encode()


def run_input(data: bytes) -> None:
    """One fuzz input; raises Finding (or any exception escaping the engine) on a violation."""
    fdp = atheris.FuzzedDataProvider(data) if atheris is not None else _Provider(data)
    aggressive, prefix = SCENARIOS[fdp.ConsumeIntInRange(0, len(SCENARIOS) - 1)]
    world = World(aggressive)
    for _ in range(prefix):
        if not world.deliver_next():
            break
    before = {side: world.established(side) for side in world.engines}
    authorized = False   # an authenticated message or a clock move may legitimately end an SA
    transcript = _TRANSCRIPTS[aggressive]
    for _ in range(fdp.ConsumeIntInRange(0, MAX_OPS)):
        op = fdp.ConsumeIntInRange(0, 7)
        side = "responder" if fdp.ConsumeBool() else "initiator"
        if op == 0:
            world.inject(side, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_DATAGRAM)))
        elif op == 1:
            real = transcript[fdp.ConsumeIntInRange(0, len(transcript) - 1)][1]
            world.inject(side, real[:28] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_DATAGRAM)))
        elif op in (2, 3):
            sa = world.keyed_sa(side)
            exchange = EXCHANGES[fdp.ConsumeIntInRange(0, len(EXCHANGES) - 1)]
            next_payload = fdp.ConsumeIntInRange(0, 21)
            choice = fdp.ConsumeIntInRange(0, 2)
            message_id = (0, 0x01020304, fdp.ConsumeIntInRange(0, 0xFFFFFFFF))[choice]
            plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_DATAGRAM))
            if sa is None:
                continue
            if op == 3:
                if message_id == 0:
                    message_id = 1
                authorized = True
            world.inject(side, _seal(sa, exchange, next_payload, message_id, plaintext, hashed=op == 3))
        elif op == 4:
            target, real = transcript[fdp.ConsumeIntInRange(0, len(transcript) - 1)]
            world.inject(target if fdp.ConsumeBool() else side, real)
        elif op == 5:
            world.deliver_next()
        elif op == 6:
            if world.in_flight:
                world.in_flight.pop(0)
        else:
            world.advance(float(fdp.ConsumeIntInRange(0, 200)))
            authorized = True
    world.collect()
    _check(world, before, authorized)


def _check(world: World, before: dict[str, dict[int, tuple[bytes, bytes, bytes]]], authorized: bool) -> None:
    for side, engine in world.engines.items():
        for handle, (cookies, skeyid_d, skeyid_a) in before[side].items():
            sa = engine.sa(handle)
            if sa is None or sa.state is not Phase1State.ESTABLISHED:
                if not authorized:
                    raise Finding(f"{side}: established SA {handle} ended by unauthenticated input")
                continue
            if (sa.initiator_cookie + sa.responder_cookie != cookies or sa.skeyid is None
                    or sa.skeyid.skeyid_d != skeyid_d or sa.skeyid.skeyid_a != skeyid_a):
                raise Finding(f"{side}: established SA {handle} changed its cookies or keys")
        stats = world.monitors[side].statistics(engine)
        if stats["isadb_list_size"] != len(engine.sas()):
            raise Finding(f"{side}: ISADB List Size {stats['isadb_list_size']} but {len(engine.sas())} SAs")
        negative = [name for name, value in stats.items() if value < 0]
        if negative:
            raise Finding(f"{side}: negative statistics {negative}")


class _Provider:
    """The subset of atheris.FuzzedDataProvider the harness uses, byte-compatible with it
    (integers are read from the end of the data, most significant byte first; booleans
    and bytes from the front), so the regression tests replay saved inputs without
    atheris (tests/test_engine_fuzz.py compares the two)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._front = 0
        self._back = len(data)

    def ConsumeIntInRange(self, low: int, high: int) -> int:  # noqa: N802 - atheris's name
        span = high - low
        result = 0
        offset = 0
        while offset < 64 and (span >> offset) > 0 and self._back > self._front:
            self._back -= 1
            result = (result << 8) | self._data[self._back]
            offset += 8
        if span != (1 << 64) - 1:
            result %= span + 1
        return low + result

    def ConsumeBool(self) -> bool:  # noqa: N802
        if self._front >= self._back:
            return False
        self._front += 1
        return bool(self._data[self._front - 1] & 1)

    def ConsumeBytes(self, count: int) -> bytes:  # noqa: N802
        count = max(0, min(count, self._back - self._front))
        out = self._data[self._front:self._front + count]
        self._front += count
        return out


def _chain(first: int, data: bytes) -> bytes:
    """The payload chain at the start of ``data`` (a decrypted body: the padding cut off)."""
    end, kind = 0, first
    while kind and end + 4 <= len(data):
        kind, size = data[end], int.from_bytes(data[end + 2:end + 4], "big")
        end += max(size, 4)
    return data[:end]


def _after_hash(next_payload: int, plaintext: bytes) -> tuple[int, bytes] | None:
    """(next payload, chain) after the leading HASH payload of a decrypted chain, padding cut."""
    if next_payload != wire.PayloadType.HASH or len(plaintext) < 4:
        return None
    length = int.from_bytes(plaintext[2:4], "big")
    return plaintext[0], _chain(plaintext[0], plaintext[length:])


def _record(aggressive: bool) -> tuple[list[tuple[str, bytes]], list[tuple[int, int, int, int, bytes]]]:
    """The clean negotiation: every datagram (by receiving side), and each encrypted one
    decrypted by its receiver just before delivery as (datagrams delivered before it,
    exchange type, next payload, Message ID, payload chain) for the seeds."""
    world = World(aggressive)
    plaintexts = []
    for delivered in range(40):
        if not world.in_flight:
            break
        side, data = world.in_flight[0]
        message = wire.parse(data)
        if message.encrypted:
            receiver = world.engines[side].sas()[0]
            plaintext, _next_iv = receiver.crypto.decrypt(message.message_id, message.body)
            plaintexts.append((delivered, int(message.exchange_type), int(message.next_payload),
                               message.message_id, _chain(int(message.next_payload), plaintext)))
        world.deliver_next()
    return world.sent, plaintexts


_RECORDED = {aggressive: _record(aggressive) for aggressive in (False, True)}
_TRANSCRIPTS = {aggressive: recorded[0] for aggressive, recorded in _RECORDED.items()}


# --- seeds ------------------------------------------------------------------------------


def _encode_program(scenario: int, ops: list[tuple[int, bool, bytes]]) -> bytes:
    """Inverse of the provider for the ops the seeds use (raw, sealed, hashed, deliver).

    Integers are consumed from the end (last byte first), booleans and bytes from the front.
    """
    front = bytearray()
    back: list[int] = []   # bytes in consumption order (from the end)

    def integer(value: int, low: int, high: int) -> None:
        span = high - low
        value -= low
        width = 0
        while width < 64 and (span >> width) > 0:
            width += 8
        encoded = value.to_bytes(width // 8, "big")
        back.extend(encoded)   # the provider reads the most significant byte first

    integer(scenario, 0, len(SCENARIOS) - 1)
    integer(len(ops), 0, MAX_OPS)
    for op, to_responder, data, *sealed in ops:
        integer(op, 0, 7)
        front.append(1 if to_responder else 0)
        if op in (2, 3):   # sealed: (exchange type, next payload, Message ID) follow the data
            exchange_type, next_payload, message_id = sealed
            integer(EXCHANGES.index(exchange_type), 0, len(EXCHANGES) - 1)
            integer(next_payload, 0, 21)
            integer(2, 0, 2)
            integer(message_id, 0, 0xFFFFFFFF)
        if op in (0, 2, 3):
            integer(len(data), 0, MAX_DATAGRAM)
            front += data
    return bytes(front) + bytes(reversed(back))


def seeds() -> list[bytes]:
    """Seed inputs: every real captured datagram as a raw operation in every scenario, and
    the clean negotiations (deliver until quiet)."""
    from ikecore.cli.decode import datagrams_from_pcap

    captured: list[bytes] = []
    for path in sorted((ROOT / "tests" / "vectors" / "captures").glob("*.pcapng")):
        for datagram in datagrams_from_pcap(path):
            if len(datagram.data) <= MAX_DATAGRAM:
                captured.append(bytes(datagram.data))
    out = []
    for scenario, (aggressive, prefix) in enumerate(SCENARIOS):
        out.append(_encode_program(scenario, [(5, False, b"")] * MAX_OPS))
        for start in range(0, len(captured), 4):
            ops = [(0, (i + scenario) % 2 == 0, data) for i, data in enumerate(captured[start:start + 4])]
            out.append(_encode_program(scenario, ops + [(5, False, b"")] * 4))
        # the real encrypted messages of the negotiation, sealed again by the harness: as
        # the next message where it belongs, and (with a new Message ID and a correct
        # HASH(1) for Quick Mode and informational chains) as a new exchange on an
        # established SA -- the fuzzer starts from valid decrypted payload chains
        for delivered, exchange_type, next_payload, message_id, plaintext in _RECORDED[aggressive][1]:
            to_responder = _TRANSCRIPTS[aggressive][delivered][0] == "responder"
            if delivered == prefix:
                out.append(_encode_program(scenario, [(2, to_responder, plaintext, exchange_type, next_payload,
                                                       message_id)] + [(5, False, b"")] * 4))
            if message_id and prefix >= delivered:
                chain = _after_hash(next_payload, plaintext)
                if chain is not None:
                    out.append(_encode_program(scenario, [(3, to_responder, chain[1], exchange_type, chain[0],
                                                           0x0A0B0C0D)] + [(5, False, b"")] * 4))
    return out


def make_corpus(directory: Path) -> int:
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for seed in seeds():
        path = directory / hashlib.sha1(seed).hexdigest()
        if not path.exists():
            path.write_bytes(seed)
            written += 1
    return written


def test_one_input(data: bytes) -> None:
    run_input(data)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--make-corpus":
        print(f"engine_fuzz: {make_corpus(Path(argv[2]))} seed inputs written to {argv[2]}")
        return 0
    if atheris is None:
        print("engine_fuzz: atheris is not installed (make build installs it)", file=sys.stderr)
        return 2
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
