"""asyncio and the operating system: sockets, the Rust front door, worker processes, the store.

``Gateway`` (``gateway.transport``) drives an ``ikecore.engine.Engine`` on asyncio.
"""

from ikecore.gateway.transport import Gateway

__all__ = ["Gateway"]
