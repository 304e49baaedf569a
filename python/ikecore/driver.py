"""The IPsec driver interface: where Quick Mode SAs go.

The engine asks the driver for an inbound SPI (Get SPI), then adds the outbound SA
(Key Addition) and the inbound SA (Key Update), and deletes them when the SA ends.
``MemoryDriver`` keeps them in a dict; a gateway may plug in its own (e.g. Linux XFRM).
A driver signals failure by raising ``DriverError``; the engine counts it.

Optional hooks a packet-moving driver may have (``ikecore.gateway.drivers``): ``attach(gateway)``
once the gateway exists (its sockets, event loop and engine), ``close()`` when it stops,
``counters(spi_in, spi_out)`` (ESP counters of an SA pair, for the Quick Mode view and
Prometheus) and ``stats()`` (its own drop counters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Container
from typing import Protocol

from ikecore.errors import IkeError

__all__ = ["DriverError", "IpsecSaKeys", "IpsecDriver", "MemoryDriver", "free_spi"]


class DriverError(IkeError):
    """The IPsec driver refused an operation."""


@dataclass(frozen=True, slots=True)
class IpsecSaKeys:
    """One direction of a Quick Mode SA as handed to the driver."""

    spi: bytes
    protocol_id: int
    source: str
    destination: str
    encryption: str
    encryption_key: bytes | bytearray = field(repr=False)  # a bytearray the engine zeroes on delete
    integrity: str
    integrity_key: bytes | bytearray = field(repr=False)
    mode: str
    lifetime: int
    lifetime_kilobytes: int | None
    local_ts: str
    remote_ts: str
    udp_encapsulation: bool = False


class IpsecDriver(Protocol):
    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes: ...
    def add_outbound(self, sa: IpsecSaKeys) -> None: ...
    def update_inbound(self, sa: IpsecSaKeys) -> None: ...
    def delete(self, spi: bytes, destination: str, protocol_id: int) -> None: ...


def free_spi(taken: Container[bytes]) -> bytes:
    """A random SPI of 256 or more (0-255 are reserved, RFC 4303 section 2.1) not in ``taken``."""
    for _attempt in range(64):
        spi = os.urandom(4)
        if int.from_bytes(spi, "big") >= 256 and spi not in taken:
            return spi
    raise DriverError("no free SPI")


class MemoryDriver:
    """An in-memory SA database: SPIs unique among the inbound SAs it handed out."""

    def __init__(self) -> None:
        self.inbound: dict[bytes, IpsecSaKeys | None] = {}
        self.outbound: dict[tuple[bytes, str], IpsecSaKeys] = {}

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        spi = free_spi(self.inbound)
        self.inbound[spi] = None
        return spi

    def add_outbound(self, sa: IpsecSaKeys) -> None:
        self.outbound[(sa.spi, sa.destination)] = sa

    def update_inbound(self, sa: IpsecSaKeys) -> None:
        if sa.spi not in self.inbound:
            raise DriverError(f"inbound SPI {sa.spi.hex()} was not allocated by get_spi")
        self.inbound[sa.spi] = sa

    def restore(self, outbound: IpsecSaKeys, inbound: IpsecSaKeys) -> None:
        """Take back both directions of an SA saved before a restart (SA store)."""
        self.outbound[(outbound.spi, outbound.destination)] = outbound
        self.inbound[inbound.spi] = inbound

    def delete(self, spi: bytes, destination: str, protocol_id: int) -> None:
        self.inbound.pop(spi, None)
        self.outbound.pop((spi, destination), None)
