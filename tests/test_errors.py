"""ikecore.errors: the hierarchy and the Notify types each class pins."""

import pytest

from ikecore import errors


def test_each_notify_error_pins_its_rfc2408_number() -> None:
    # RFC 2408 section 3.14.1: the error types 1-30 we raise (26-28 are status-like).
    expected = {
        "InvalidPayloadType": 1, "InvalidCookie": 4, "InvalidMajorVersion": 5,
        "InvalidExchangeType": 7, "InvalidFlags": 8, "InvalidMessageId": 9,
        "InvalidSpi": 11, "NoProposalChosen": 14, "PayloadMalformed": 16,
        "InvalidKeyInformation": 17, "InvalidIdInformation": 18,
        "InvalidHashInformation": 23, "AuthenticationFailed": 24,
        "UnequalPayloadLengths": 30,
    }
    for name, number in expected.items():
        cls = getattr(errors, name)
        assert cls.notify_type == number
        assert errors.NOTIFY_ERROR_CLASSES[number] is cls
        assert issubclass(cls, errors.RemoteProtocolError)


def test_notify_hint_can_be_overridden_per_instance() -> None:
    err = errors.PayloadMalformed("bad", notify_type=1)
    assert err.notify_type == 1
    assert errors.PayloadMalformed.notify_type == 16


def test_byte_errors_are_value_errors_and_protocol_error_is_abstract() -> None:
    assert isinstance(errors.PayloadMalformed("x"), ValueError)
    assert not isinstance(errors.NoProposalChosen("x"), ValueError)
    with pytest.raises(TypeError):
        errors.ProtocolError("abstract")


def test_config_error_names_the_field() -> None:
    err = errors.ConfigError("ike", "unknown algorithm 'aes999'; use e.g. aes128-sha256-modp2048")
    assert str(err).startswith("ike: unknown algorithm")
    assert isinstance(err, ValueError)
