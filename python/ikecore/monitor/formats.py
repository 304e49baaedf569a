"""One representation per field: how every output of ikecore writes a value.

Design note. ``connect --json``, ``monitor`` (table, JSON, CSV), the control socket, the
monitor page and the Prometheus labels show the same SA, so each kind of value is
written one way, here, and every one of them asks this module:

* instants: ISO 8601 UTC to the second, ``2026-12-07T21:30:00Z`` (``iso_utc``); where
  an age helps, a number of seconds beside it (``..._age``);
* cookies, SPIs and any other bytes: lower-case hex, ``8f2a0c1d...`` (``hex_text``);
* lists (``vendor_ids``): JSON lists in JSON; in CSV and tables the items joined with
  ``;`` (``LIST_SEPARATOR``);
* booleans: JSON's ``true``/``false`` in JSON, and the same words in CSV and tables;
* enumerations by name, addresses as text, None as JSON's null and an empty cell.

Terminal escapes (clearing the screen) are the business of ``ikecore.monitor.cli``:
only on a terminal, only for tables. This module imports nothing heavy: ``ikecore
monitor`` loads it to print a listing.
"""

from __future__ import annotations

import enum
import time
from typing import Any

__all__ = ["ISO_FORMAT", "LIST_SEPARATOR", "iso_utc", "hex_text", "text_cell", "json_value"]

#: ``time.strftime`` format of an instant: ISO 8601, UTC, to the second.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

#: What joins the items of a list in a CSV cell or a table cell.
LIST_SEPARATOR = ";"


def iso_utc(unix_seconds: float) -> str:
    """An instant of the wall clock (Unix seconds) as ``2026-12-07T21:30:00Z``."""
    return time.strftime(ISO_FORMAT, time.gmtime(unix_seconds))


def hex_text(data: bytes) -> str:
    """Bytes (a cookie, an SPI) as lower-case hex without separators."""
    return data.hex()


def text_cell(value: Any) -> str:
    """A value as a CSV or table cell shows it: '' for None, ``true``/``false``, lists
    joined with ``;``, bytes in hex, enumerations by name, anything else as ``str``."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if value.__class__ is str:
        return str(value)
    if isinstance(value, (list, tuple)):
        return LIST_SEPARATOR.join(text_cell(item) for item in value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


def json_value(value: Any) -> Any:
    """A value as JSON shows it: bytes in hex, enumerations by name, tuples as lists,
    addresses and other objects as text; numbers, strings, booleans and None as they are."""
    if value is None or value.__class__ in (str, int, float, bool):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (int, float, str)):
        return value
    return str(value)
