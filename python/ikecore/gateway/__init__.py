"""asyncio and the operating system: sockets, the Rust front door, DH threads, worker
processes, the SA store.

``Gateway`` (``gateway.transport``) drives an ``ikecore.engine.Engine`` on asyncio;
``dh_pool.KeypairReserve`` makes its DH key pairs ahead on threads, ``store.SaStore``
keeps its SAs across restarts, ``workers.Supervisor`` runs it in N processes over shared
ports (``reuseport`` steers each datagram to the worker of its initiator cookie).
"""

from ikecore.gateway.transport import Gateway

__all__ = ["Gateway"]
