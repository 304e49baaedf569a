"""Which IPsec driver a gateway hands its Quick Mode SAs to: ``--driver`` / ``driver``.

* ``memory`` (the default): ``ikecore.driver.MemoryDriver``, a dict; no packet is protected
  (load tests, simulations).
* ``xfrm``: the Linux kernel over netlink (``ikecore.gateway.xfrm.XfrmDriver``).
* ``userland``: ESP in Rust behind a TUN device (``ikecore.gateway.userland.UserlandDriver``).

A name not in that list, or a driver that cannot start (no privileges, no kernel
support), is a ConfigError naming the flag or key that chose it.
"""

from __future__ import annotations

from typing import Any

from ikecore.driver import DriverError, MemoryDriver
from ikecore.errors import ConfigError

__all__ = ["DRIVERS", "make_driver"]

DRIVERS = ("memory", "xfrm", "userland")


def make_driver(name: str | None, *, field_name: str = "--driver", tun_name: str | None = None) -> Any:
    """A started driver called ``name`` (None: memory); ConfigError naming ``field_name``."""
    name = name or "memory"
    if name == "memory":
        return MemoryDriver()
    if name == "userland":
        from ikecore.gateway.userland import DEFAULT_TUN, UserlandDriver

        try:
            return UserlandDriver(tun_name or DEFAULT_TUN)
        except DriverError as exc:
            raise ConfigError(field_name, f"userland: {exc}") from None
    if name == "xfrm":
        from ikecore.gateway.xfrm import XfrmDriver

        try:
            return XfrmDriver()
        except (DriverError, OSError) as exc:
            raise ConfigError(field_name, f"xfrm: {exc}") from None
    raise ConfigError(field_name, f"unknown driver {name!r}; use one of {', '.join(DRIVERS)}")
