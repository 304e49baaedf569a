"""The many-SA sans-IO engine: cookies to SAs, timers, admission, acquires, rekeys, persistence.

``Engine`` (``engine.core``) is the public entry; the other modules are its helpers.
"""

from ikecore.engine.core import Engine

__all__ = ["Engine"]
