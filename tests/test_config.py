"""Config: TOML and flags; every error names the key and the fix in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ikecore.config import config_from_dict, load_config, parse_endpoint
from ikecore.errors import ConfigError

GOOD = """
[gateway]
listen = ["127.0.0.1:500", "[::1]:4500"]
my_id = "gw.example.net"

[ike_policy.strong]
proposals = ["aes256-sha384-ecp384", "aes128-sha256-modp2048"]
lifetime = 3600

[esp_policy.pfs]
proposals = "aes256-sha256-modp2048"
mode = "transport"

[[filter]]
name = "branch"
source = "me"
destination = "10.0.0.0/8"
ike_policy = "strong"
esp_policy = "pfs"
psk = "s3cret"
weight = 5
"""


def test_a_full_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD)
    path.chmod(0o600)  # it holds a pre-shared key: owner-only, or refused
    config = load_config(str(path))
    assert config.listen == (("127.0.0.1", 500), ("::1", 4500))
    assert [p.name for p in config.ike_policies["strong"].proposals] == ["aes256-sha384-ecp384",
                                                                          "aes128-sha256-modp2048"]
    assert config.esp_policies["pfs"].mode == "transport" and config.esp_policies["pfs"].pfs_group == 14
    flt = config.filter_for("192.0.2.1", "10.9.9.9")
    assert flt is not None and flt.name == "branch" and flt.psk() == b"s3cret"
    assert config.filter_for("192.0.2.1", "203.0.113.1") is None


@pytest.mark.parametrize(("patch", "key"), [
    ({"filter": [{"psk": "x", "ike_policy": "nope"}]}, "filter[0].ike_policy"),
    ({"filter": [{"source": "not-an-address", "psk": "x"}]}, "filter[0].source"),
    ({"filter": [{"destination": "any"}]}, "filter[0].psk"),
    ({"ike_policy": {"p": {"proposals": "aes128-md7-modp2048"}}}, "ike_policy.p.proposals"),
    ({"esp_policy": {"e": {"mode": "sideways"}}}, "esp_policy.e.mode"),
    ({"gateway": {"listen": ["127.0.0.1:99999"]}}, "gateway.listen"),
    ({"gateway": {"colour": "blue"}}, "gateway.colour"),
    ({"filter": [{"psk": "x", "weight": "heavy"}]}, "filter[0].weight"),
])
def test_bad_values_name_the_key(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(patch)
    assert str(info.value).startswith(key + ":")
    assert "\n" not in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="^config: .* is not valid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="^config: cannot read"):
        load_config(str(tmp_path / "missing.toml"))


def test_endpoints() -> None:
    assert parse_endpoint("192.0.2.1", 500, "peer") == ("192.0.2.1", 500)
    assert parse_endpoint("192.0.2.1:4500", 500, "peer") == ("192.0.2.1", 4500)
    assert parse_endpoint("[2001:db8::1]:4500", 500, "peer") == ("2001:db8::1", 4500)
    assert parse_endpoint("2001:db8::1", 500, "peer") == ("2001:db8::1", 500)
    with pytest.raises(ConfigError, match="peer: 'gw.example' is not ADDR"):
        parse_endpoint("gw.example", 500, "peer")
