"""The many-SA sans-IO engine: cookies to SAs, timers, admission, acquires, rekeys, persistence.

``Engine`` (``engine.core``) is the public entry; the other modules are its helpers:
``timers`` (the timer kinds), ``services`` (what the engine lends ``acquire`` and
``rekey``), ``admission`` (the responder's flood gate) and ``persist`` (SA records).
"""

from ikecore.engine.core import Engine

__all__ = ["Engine"]
