"""Every ``ikecore.…`` name the README, bench/README and docs/ mention resolves, and every
``python/ikecore/…`` path they name exists: the documents and the code cannot drift apart."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAME = re.compile(r"`[^`]*?(?<![/\w.$-])(ikecore(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
PATH = re.compile(r"\b(python/ikecore/[A-Za-z0-9_/]+\.py)\b")


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted``, then follow attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def _mentioned(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = {(doc.relative_to(ROOT).as_posix(), match) for doc in DOCUMENTS
             for match in pattern.findall(doc.read_text())}
    return sorted(found)


def test_the_documents_mention_names_and_paths() -> None:
    assert len(_mentioned(NAME)) > 20 and len(_mentioned(PATH)) > 5


@pytest.mark.parametrize(("document", "dotted"), _mentioned(NAME))
def test_every_documented_name_resolves(document: str, dotted: str) -> None:
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{document} names {dotted}, which does not resolve: {exc}")


@pytest.mark.parametrize(("document", "path"), _mentioned(PATH))
def test_every_documented_path_exists(document: str, path: str) -> None:
    assert (ROOT / path).is_file(), f"{document} names {path}, which does not exist"


def test_the_library_entry_points() -> None:
    from ikecore.engine import Engine
    from ikecore.engine.core import Engine as CoreEngine
    from ikecore.gateway import Gateway
    from ikecore.gateway.transport import Gateway as TransportGateway

    assert Engine is CoreEngine and Gateway is TransportGateway
    for module in ("ikecore.wire", "ikecore.dh", "ikecore.keymat"):
        assert importlib.import_module(module).__name__ == module


#: The package root's public names: what ``from ikecore import *`` gives a library user.
PUBLIC = {
    "__version__", "AuthenticationFailed", "ConfigError", "CryptoError", "IkeError", "InvalidCookie",
    "InvalidKeyInformation", "InvalidPayloadType", "LocalProtocolError", "NegotiationFailed", "NegotiationTimeout",
    "NoProposalChosen", "PayloadMalformed", "ProtocolError", "RemoteProtocolError",
}


def test_the_package_root_exports_exactly_the_public_names() -> None:
    import ikecore
    from ikecore import errors

    assert set(ikecore.__all__) == PUBLIC and len(ikecore.__all__) == len(PUBLIC)
    for name in PUBLIC - {"__version__"}:
        assert getattr(ikecore, name) is getattr(errors, name)
    assert issubclass(ikecore.NegotiationFailed, ikecore.IkeError)
    assert issubclass(ikecore.NegotiationTimeout, ikecore.NegotiationFailed)
    assert issubclass(ikecore.NegotiationTimeout, TimeoutError)
    assert issubclass(ikecore.ConfigError, ValueError)


def test_the_gateway_library_surface() -> None:
    import inspect

    from ikecore.gateway import ConnectResult, Gateway
    from ikecore.gateway.transport import ConnectResult as TransportResult

    assert ConnectResult is TransportResult and "check" in inspect.signature(Gateway.connect).parameters
    assert {"handle", "ok", "reason", "phase1", "phase2", "notify"} <= set(ConnectResult.__dataclass_fields__)
    for name in ("__aenter__", "__aexit__", "aclose", "listen"):
        assert callable(getattr(Gateway, name))
