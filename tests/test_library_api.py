"""The library as a Python user meets it: ``Gateway.connect`` raises typed exceptions that
carry the Notify (RFC 2408 section 3.14.1 numbers), ``async with Gateway.listen(...)``
opens and closes its sockets, and configuration errors from library calls name the
configuration key while the command line names the flag."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ikecore
from ikecore.config import Config, Limits, config_from_flags, flag_message, load_config
from ikecore.engine import Engine
from ikecore.gateway import Gateway
from ikecore.gateway.transport import ConnectResult
from ikecore.policy import parse_ike_proposals

PSK = "library-secret"
NO_PROPOSAL_CHOSEN = 14  # RFC 2408 section 3.14.1


def _run(coro: object, limit: float = 60) -> object:
    return asyncio.run(asyncio.wait_for(coro, limit))  # type: ignore[arg-type]


def _port_is_free(address: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(address)
        except OSError:
            return False
        return True


# --- typed failures -------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [False, True])
def test_a_mismatched_ike_proposal_raises_negotiation_failed_with_its_notify(fast_path: bool) -> None:
    async def scenario() -> ikecore.NegotiationFailed:
        async with Gateway.listen(["127.0.0.1:0"], psk=PSK, ike="aes128-sha256-modp2048",
                                  fast_path=fast_path) as responder:
            async with Gateway.listen([("127.0.0.2", 0)], psk=PSK, ike="3des-sha1-modp1024",
                                      fast_path=fast_path) as initiator:
                with pytest.raises(ikecore.NegotiationFailed) as info:
                    await initiator.connect(responder.addresses()[0], local=initiator.addresses()[0], timeout=20)
                return info.value

    failure = _run(scenario())
    assert isinstance(failure, ikecore.NegotiationFailed) and isinstance(failure, ikecore.IkeError)
    assert not isinstance(failure, ikecore.NegotiationTimeout)
    assert failure.notify == NO_PROPOSAL_CHOSEN and failure.notify.name == "NO_PROPOSAL_CHOSEN"  # type: ignore[union-attr]
    assert failure.phase == 1 and "NO-PROPOSAL-CHOSEN" in failure.reason
    assert isinstance(failure.result, ConnectResult) and failure.result.phase1 is None and not failure.result.ok


def test_a_mismatched_esp_proposal_fails_in_phase_2_and_check_false_returns_the_result() -> None:
    async def scenario() -> tuple[ikecore.NegotiationFailed, ConnectResult]:
        async with Gateway.listen(["127.0.0.1:0"], psk=PSK, esp="aes128-sha256") as responder:
            async with Gateway.listen([("127.0.0.2", 0)], psk=PSK, esp="3des-sha1") as initiator:
                target, local = responder.addresses()[0], initiator.addresses()[0]
                with pytest.raises(ikecore.NegotiationFailed) as info:
                    await initiator.connect(target, local=local, timeout=20)
                result = await initiator.connect(target, local=local, timeout=20, check=False)
                return info.value, result

    failure, result = _run(scenario())  # type: ignore[misc]
    assert failure.phase == 2 and failure.notify == NO_PROPOSAL_CHOSEN
    assert failure.result.phase1 is not None  # Main Mode was up; its Quick Mode was refused
    assert not result.ok and result.notify == NO_PROPOSAL_CHOSEN and result.phase1 is not None
    assert "NO-PROPOSAL-CHOSEN" in result.reason and result.phase2 == []


def test_an_agreeing_peer_returns_the_result() -> None:
    async def scenario() -> ConnectResult:
        async with Gateway.listen(["127.0.0.1:0"], psk=PSK) as responder:
            async with Gateway.listen([("127.0.0.2", 0)], psk=PSK) as initiator:
                return await initiator.connect(responder.addresses()[0], local=initiator.addresses()[0], timeout=20)

    result = _run(scenario())
    assert isinstance(result, ConnectResult) and result.ok and result.notify is None
    assert result.phase1 is not None and len(result.phase2) == 1 and len(result.phase2[0].spi_in) == 4


def test_no_answer_raises_negotiation_timeout() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a peer that never answers
    silent.bind(("127.0.0.1", 0))

    async def scenario() -> ikecore.NegotiationTimeout:
        async with Gateway.listen([("127.0.0.2", 0)], psk=PSK) as initiator:
            with pytest.raises(TimeoutError) as info:
                await initiator.connect(silent.getsockname(), local=initiator.addresses()[0], timeout=0.5)
            return info.value  # type: ignore[return-value]

    try:
        started = time.monotonic()
        failure = _run(scenario())
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    assert isinstance(failure, ikecore.NegotiationTimeout) and isinstance(failure, ikecore.NegotiationFailed)
    assert failure.notify is None and failure.phase == 1


def test_closing_the_gateway_ends_a_pending_connect() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))

    async def scenario() -> BaseException | None:
        initiator = Gateway(Engine(config_from_flags(psk=PSK, listen=())))
        local = await initiator.open(("127.0.0.2", 0))
        pending = asyncio.ensure_future(initiator.connect(silent.getsockname(), local=local, timeout=30))
        await asyncio.sleep(0.2)
        await initiator.aclose()
        return (await asyncio.gather(pending, return_exceptions=True))[0]  # type: ignore[no-any-return]

    try:
        outcome = _run(scenario())
    finally:
        silent.close()
    assert isinstance(outcome, ikecore.NegotiationFailed) and "closed" in outcome.reason


# --- async with -----------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [False, True])
def test_async_with_gateway_listen_closes_its_sockets(fast_path: bool) -> None:
    async def scenario() -> tuple[tuple[str, int], bool]:
        config = config_from_flags(psk=PSK, listen=(("127.0.0.1", 0),))
        async with Gateway.listen(config, fast_path=fast_path) as gateway:
            (address,) = gateway.addresses()
            busy = not _port_is_free(address)
            assert gateway.engine.config is config
        return address, busy

    address, busy = _run(scenario())  # type: ignore[misc]
    assert busy and _port_is_free(address)  # bound inside, reusable after


def test_async_with_gateway_listen_closes_on_an_exception_and_takes_an_engine() -> None:
    async def scenario() -> tuple[str, int]:
        engine = Engine(config_from_flags(psk=PSK, listen=(("127.0.0.1", 0),)))
        seen: list[tuple[str, int]] = []
        with pytest.raises(RuntimeError, match="inside"):
            async with Gateway.listen(engine) as gateway:
                assert gateway.engine is engine
                seen += gateway.addresses()
                raise RuntimeError("inside")
        return seen[0]

    assert _port_is_free(_run(scenario()))  # type: ignore[arg-type]


def test_async_with_a_gateway_built_by_hand_closes_it() -> None:
    async def scenario() -> tuple[str, int]:
        async with Gateway(Engine(config_from_flags(psk=PSK, listen=()))) as gateway:
            (address,) = await gateway.listen([("127.0.0.1", 0)])
            assert not _port_is_free(address)
        return address

    assert _port_is_free(_run(scenario()))  # type: ignore[arg-type]


def test_gateway_listen_refuses_flags_beside_a_config() -> None:
    with pytest.raises(TypeError, match="psk"):
        Gateway.listen(config_from_flags(psk=PSK), psk="other")


# --- configuration errors name the key, the command line the flag ---------------------------


def test_config_from_flags_names_the_key() -> None:
    with pytest.raises(ikecore.ConfigError) as info:
        config_from_flags(psk=PSK, ike="aes128-sha7-modp2048")
    assert info.value.key == "ike" and str(info.value).startswith("ike: unknown integrity 'sha7'")
    assert flag_message(info.value).startswith("--ike: unknown integrity 'sha7'")
    with pytest.raises(ikecore.ConfigError) as info:
        config_from_flags(psk=PSK, esp="aes128-md7")
    assert info.value.key == "esp" and flag_message(info.value).startswith("--esp: ")
    with pytest.raises(ikecore.ConfigError) as info:
        config_from_flags(psk="")
    assert info.value.key == "psk" and flag_message(info.value).startswith("--psk: ")
    with pytest.raises(ikecore.ConfigError) as info:
        config_from_flags(psk=PSK, nat_traversal="sometimes")
    assert str(info.value).startswith("nat_traversal: ") and flag_message(info.value).startswith("--nat-t: ")
    with pytest.raises(ikecore.ConfigError, match="^ike: .*modp4097"):
        parse_ike_proposals("aes128-sha256-modp4097")


def test_config_objects_and_files_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ikecore.ConfigError) as info:
        Limits(isakmp_sas=-1)
    assert info.value.key == "limits.isakmp_sas"
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nlisten = ["127.0.0.1:500"]\n'
                    '[[filter]]\npsk = "a"\n[[filter]]\npsk = "b"\n[[filter]]\npsk = "c"\nlocal_ts = 5\n')
    path.chmod(0o600)
    with pytest.raises(ikecore.ConfigError) as info:
        load_config(str(path))
    assert info.value.key == "filter[2].local_ts" and str(info.value) == "filter[2].local_ts: must be str, not int"
    assert flag_message(info.value) == str(info.value)  # a key of the file: the CLI says it as it is
    path.write_text('[ike_policy.fast]\nproposals = "aes128-sha7-modp2048"\n')
    with pytest.raises(ikecore.ConfigError, match=r"^ike_policy\.fast\.proposals: unknown integrity 'sha7'"):
        load_config(str(path))
    with pytest.raises(ikecore.ConfigError) as info:
        load_config(str(tmp_path / "missing.toml"))
    assert info.value.key == "config" and flag_message(info.value).startswith("--config: cannot read ")
    assert isinstance(Config(), Config)


def test_the_command_line_names_the_flag() -> None:
    done = subprocess.run([sys.executable, "-m", "ikecore", "connect", "127.0.0.1:9", "--psk", PSK,
                           "--ike", "aes128-sha7-modp2048"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("ikecore connect: --ike: unknown integrity 'sha7'")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_async_with_gateway_listen_on_a_busy_port_raises_and_leaves_nothing_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        free = ("127.0.0.2", taken.getsockname()[1])
        if not _port_is_free(free):
            pytest.skip("the same port on 127.0.0.2 is in use")

        async def scenario() -> None:
            with pytest.raises(OSError):
                async with Gateway.listen([free, taken.getsockname()], psk=PSK):
                    pass

        _run(scenario())
        assert _port_is_free(free)  # the socket opened before the busy one was closed
