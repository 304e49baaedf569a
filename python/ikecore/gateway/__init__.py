"""asyncio and the operating system: sockets, the Rust front door, DH threads, worker
processes, the SA store.

``Gateway`` (``gateway.transport``) drives an ``ikecore.engine.Engine`` on asyncio
(``async with Gateway.listen(config) as gateway``; ``connect`` returns a ``ConnectResult``
or raises ``ikecore.NegotiationFailed``);
``dh_pool.KeypairReserve`` makes its DH key pairs ahead on threads, ``store.SaStore``
keeps its SAs across restarts, ``workers.Supervisor`` runs it in N processes over shared
ports (``reuseport`` steers each datagram to the worker of its initiator cookie).
"""

from ikecore.gateway.transport import ConnectResult, Gateway

__all__ = ["Gateway", "ConnectResult"]
