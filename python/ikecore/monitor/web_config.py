"""TLS and basic authentication for ``/metrics``: the web configuration file of Prometheus'
exporter toolkit.

``ikecore serve --metrics ADDR:PORT --metrics-web-config FILE`` reads the same YAML file
as Prometheus' own exporters (``--web.config.file``)::

    tls_server_config:
      cert_file: server.crt          # PEM; relative paths are relative to FILE
      key_file: server.key           # PEM private key, owner-only (chmod 600)
      client_ca_file: clients.pem    # optional: client certificates signed by these CAs
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
      min_version: TLS12             # TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash: htpasswd -nBC 10 "" | tr -d ':\\n'

An empty file serves plain HTTP to anyone, as without the flag. Every mistake is one
``ConfigError`` naming the file and the key. A password is checked by bcrypt once; a
later request with the same user and password is recognised by an HMAC under a
per-process key (constant-time compare), so Prometheus scraping every second costs a
hash, not a bcrypt. bcrypt runs off the event loop, one check at a time and at most
``BasicAuth.CHECKS_PER_SECOND`` a second: guessing passwords cannot take the gateway's
cores. An unknown user costs the same bcrypt as a known one (no user enumeration).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ikecore.errors import ConfigError

__all__ = ["WebConfig", "BasicAuth", "load_web_config"]

FLAG = "--metrics-web-config"

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Checked against when the user is unknown, so that an unknown user costs a bcrypt too.
_DUMMY_HASH = b"$2b$10$4NZ5gHUDmVhHqf6m5YJzBOw3bVb3.t0ZrTGcxvQ3U1i6F2P2zWzXa"


@dataclass
class WebConfig:
    """What a web configuration file asks for: a TLS context and basic-auth users."""

    path: str
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    def auth(self) -> BasicAuth | None:
        return BasicAuth(self.users) if self.users else None


def _fail(path: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{FLAG} {path}: {key}", problem)


def load_web_config(path: str) -> WebConfig:
    """Read and check ``path``; raises ConfigError naming the file and the key."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # a dependency of the package; said plainly if it is missing
        raise ConfigError(FLAG, "needs PyYAML: pip install pyyaml") from None
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(FLAG, f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(FLAG, f"{path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(path, "(top level)", "must be a mapping with tls_server_config and/or basic_auth_users")
    allowed = {"tls_server_config", "basic_auth_users"}
    for key in data:
        if key not in allowed:
            raise _fail(path, str(key), f"unknown key; allowed: {', '.join(sorted(allowed))}")
    config = WebConfig(path)
    tls = data.get("tls_server_config")
    if tls is not None:
        config.tls = _tls_context(path, tls)
    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise _fail(path, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
        for name, hashed in users.items():
            key = f"basic_auth_users.{name}"
            if not isinstance(name, str) or not name or ":" in name:
                raise _fail(path, key, "a user name is a non-empty string without ':'")
            if not isinstance(hashed, str) or not _is_bcrypt(hashed):
                raise _fail(path, key, "must be a bcrypt hash ($2y$10$... as htpasswd -nBC 10 \"\" "
                                       "| tr -d ':\\n' prints it), not a password")
            config.users[name] = hashed.encode("ascii")
    return config


def _is_bcrypt(text: str) -> bool:
    parts = text.split("$")
    return (len(text) == 60 and len(parts) == 4 and parts[0] == "" and parts[1] in ("2a", "2b", "2y")
            and parts[2].isdigit() and 4 <= int(parts[2]) <= 31)


def _file(path: str, table: dict[str, Any], key: str, required: bool) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise _fail(path, f"tls_server_config.{key}", "is required (a PEM file)")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(path, f"tls_server_config.{key}", "must be a file name")
    full = os.path.join(os.path.dirname(os.path.abspath(path)), value)
    if not os.path.isfile(full) or not os.access(full, os.R_OK):
        raise _fail(path, f"tls_server_config.{key}", f"cannot read {full}")
    return full


def _tls_context(path: str, table: Any) -> ssl.SSLContext:
    if not isinstance(table, dict):
        raise _fail(path, "tls_server_config", "must be a mapping with cert_file and key_file")
    for key in table:
        if key not in _TLS_KEYS:
            raise _fail(path, f"tls_server_config.{key}", f"unknown key; allowed: {', '.join(sorted(_TLS_KEYS))}")
    cert = _file(path, table, "cert_file", True)
    key_file = _file(path, table, "key_file", True)
    assert cert is not None and key_file is not None
    mode = stat.S_IMODE(os.stat(key_file).st_mode)
    if mode & 0o077:  # a private key: owner-only, as ssh wants its keys
        raise _fail(path, "tls_server_config.key_file", f"{key_file} is accessible by other users "
                                                        f"(mode {mode:04o}); chmod 600 {key_file}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = table.get("min_version", "TLS12")
    if version not in _VERSIONS:
        raise _fail(path, "tls_server_config.min_version", f"must be one of {', '.join(_VERSIONS)}")
    context.minimum_version = _VERSIONS[version]
    try:
        context.load_cert_chain(cert, key_file)
    except ssl.SSLError as exc:
        raise _fail(path, "tls_server_config.key_file",
                    f"{key_file} is not the PEM private key of {cert} ({exc.reason or exc})") from None
    authentication = table.get("client_auth_type", "NoClientCert")
    if authentication not in _CLIENT_AUTH:
        raise _fail(path, "tls_server_config.client_auth_type", f"must be one of {', '.join(_CLIENT_AUTH)}")
    ca = _file(path, table, "client_ca_file", _CLIENT_AUTH[authentication] != ssl.CERT_NONE)
    if ca is not None:
        try:
            context.load_verify_locations(ca)
        except ssl.SSLError as exc:
            raise _fail(path, "tls_server_config.client_ca_file", f"{ca} holds no PEM certificate ({exc})") from None
    context.verify_mode = _CLIENT_AUTH[authentication]
    return context


class BasicAuth:
    """Checks ``Authorization: Basic ...`` headers against bcrypt hashes (RFC 7617)."""

    CHECKS_PER_SECOND = 4.0   # bcrypt verifications started per second, at most
    USERS_REMEMBERED = 256    # user names whose recent outcomes are kept
    PER_USER = 4              # outcomes kept per user name

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = dict(users)
        self.bcrypt_checks = 0
        self._key = os.urandom(32)
        # user -> [(HMAC of "user:password" under _key, outcome)], most recent last
        self._outcomes: OrderedDict[str, list[tuple[bytes, bool]]] = OrderedDict()
        self._lock: asyncio.Lock | None = None
        self._next_check = 0.0

    async def check(self, header: str | None) -> bool:
        """True when ``header`` carries a known user and the right password."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, colon, password = decoded.partition(b":")
        if not colon:
            return False
        user = user_bytes.decode("utf-8", "replace")
        tag = hmac.new(self._key, decoded, hashlib.sha256).digest()
        known = self._known(user, tag)
        if known is not None:
            return known
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one bcrypt at a time, paced
            known = self._known(user, tag)
            if known is not None:
                return known
            loop = asyncio.get_running_loop()
            wait = self._next_check - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_check = loop.time() + 1.0 / self.CHECKS_PER_SECOND
            hashed = self.users.get(user)
            ok = await loop.run_in_executor(None, _bcrypt_check, password, hashed or _DUMMY_HASH)
            ok = ok and hashed is not None
            self.bcrypt_checks += 1
            remembered = self._outcomes.setdefault(user, [])
            remembered.append((tag, ok))
            del remembered[:-self.PER_USER]
            self._outcomes.move_to_end(user)
            while len(self._outcomes) > self.USERS_REMEMBERED:
                self._outcomes.popitem(last=False)
            return ok

    def _known(self, user: str, tag: bytes) -> bool | None:
        """The outcome remembered for this user and password, compared in constant time."""
        found = None
        for remembered, outcome in self._outcomes.get(user, ()):
            if hmac.compare_digest(remembered, tag):
                found = outcome
        return found


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False
