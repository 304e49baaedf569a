"""What a monitor client needs of the views: their names and columns, column
titles, and rendering as table, JSON or CSV.

It imports nothing heavy (no engine, crypto or asyncio), so that ``ikecore monitor`` starts
fast: a one-shot command listing thousands of SAs spends more time starting Python than
asking the gateway. ``ikecore.monitor.views`` builds the rows on the gateway side.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from ikecore.monitor.formats import json_value, text_cell

__all__ = ["MM", "QM", "VIEWS", "COLUMNS", "DEFAULT_COLUMNS", "ViewError", "column_title", "render", "dumps"]


class ViewError(ValueError):
    """A request names an unknown view or column, or a bad sort key."""


MM, QM = "main-mode", "quick-mode"

#: The views of each mode (the IP Security Monitor document's folders).
VIEWS: dict[str, tuple[str, ...]] = {
    MM: ("generic-filters", "specific-filters", "ike-policies", "statistics", "security-associations",
         "counters"),
    QM: ("generic-filters", "specific-filters", "statistics", "security-associations", "counters"),
}

#: Every column a view can show, defaults first (in the IP Security Monitor document's order).
COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    (MM, "generic-filters"): ("name", "source", "destination", "ike_policy", "authentication_methods",
                              "connection_type", "weight", "mirrored", "quick_mode_policy"),
    (MM, "specific-filters"): ("name", "source", "destination", "direction", "ike_policy",
                               "authentication_methods", "weight", "connection_type"),
    (MM, "ike-policies"): ("name", "encryption", "integrity", "diffie_hellman", "authentication",
                           "lifetime", "preference"),
    (MM, "statistics"): ("statistic", "value"),
    (MM, "security-associations"): ("me", "my_id", "peer", "peer_id", "authentication", "encryption",
                                    "integrity", "diffie_hellman", "initiator_cookie", "responder_cookie",
                                    "state", "role", "created", "lifetime_left", "nat", "vendor_ids",
                                    "quick_modes", "local_port", "peer_port", "exchange", "nat_t",
                                    "encapsulated", "dpd", "worker", "age_seconds"),
    (QM, "generic-filters"): ("name", "source", "destination", "source_port", "destination_port",
                              "source_tunnel_endpoint", "destination_tunnel_endpoint", "protocol",
                              "quick_mode_policy", "mode"),
    (QM, "specific-filters"): ("name", "source", "destination", "source_port", "destination_port",
                               "source_tunnel_endpoint", "destination_tunnel_endpoint", "protocol",
                               "direction", "quick_mode_policy", "weight", "source_dns_name",
                               "destination_dns_name"),
    (QM, "statistics"): ("statistic", "value"),
    (QM, "security-associations"): ("me", "peer", "protocol", "encryption", "integrity", "diffie_hellman",
                                    "spi_in", "spi_out", "mode", "local_ts", "remote_ts", "my_id",
                                    "peer_id", "authentication", "initiator_cookie", "responder_cookie",
                                    "created", "lifetime_left", "lifetime_kilobytes", "worker", "bytes_in",
                                    "bytes_out", "packets_in", "packets_out", "replay_drops", "icv_failures"),
    (MM, "counters"): ("counter", "value"),
    (QM, "counters"): ("counter", "value"),
}

DEFAULT_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    (MM, "generic-filters"): COLUMNS[(MM, "generic-filters")][:6],
    (MM, "specific-filters"): COLUMNS[(MM, "specific-filters")][:7],
    (MM, "ike-policies"): COLUMNS[(MM, "ike-policies")][:6],
    (MM, "statistics"): ("statistic", "value"),
    (MM, "security-associations"): COLUMNS[(MM, "security-associations")][:8],
    (QM, "generic-filters"): COLUMNS[(QM, "generic-filters")][:9],
    (QM, "specific-filters"): COLUMNS[(QM, "specific-filters")][:11],
    (QM, "statistics"): ("statistic", "value"),
    (QM, "security-associations"): COLUMNS[(QM, "security-associations")][:8],
    (MM, "counters"): ("counter", "value"),
    (QM, "counters"): ("counter", "value"),
}

_MORE_NAMES = {
    "name": "Name", "source": "Source", "destination": "Destination", "ike_policy": "IKE Policy",
    "authentication_methods": "Authentication Methods", "connection_type": "Connection Type",
    "direction": "Direction", "weight": "Weight", "mirrored": "Mirrored", "quick_mode_policy": "Quick Mode Policy",
    "lifetime": "Lifetime", "preference": "Preference", "statistic": "Statistic", "value": "Value",
    "nat": "NAT", "vendor_ids": "Vendor IDs", "source_port": "Source Port", "destination_port": "Destination Port",
    "source_tunnel_endpoint": "Source Tunnel Endpoint", "destination_tunnel_endpoint": "Destination Tunnel Endpoint",
    "protocol": "Protocol", "source_dns_name": "Source DNS Name", "destination_dns_name": "Destination DNS Name",
    "counter": "Counter", "lifetime_kilobytes": "Lifetime (KB)", "quick_modes": "Quick Modes",
    "exchange": "Exchange", "nat_t": "NAT-T", "encapsulated": "UDP Encapsulated", "dpd": "DPD",
    "worker": "Worker", "age_seconds": "Age (s)", "bytes_in": "Bytes In", "bytes_out": "Bytes Out", "packets_in": "Packets In",
    "packets_out": "Packets Out", "replay_drops": "Replay Drops", "icv_failures": "ICV Failures",
}

def column_title(key: str) -> str:
    """The header a table shows for a column key."""
    title = _MORE_NAMES.get(key)
    if title is None:
        # the IP Security Monitor document's names of the SA columns and statistics
        from ikecore.monitor.counters import display_name

        title = display_name(key)
    return title


def dumps(value: Any) -> str:
    """JSON text (orjson: a 100,000-SA listing encodes in tens of milliseconds)."""
    import orjson  # on use: a monitor client that copies the gateway's JSON through needs none

    return orjson.dumps(value, default=json_value).decode()


def render(result: dict[str, Any], fmt: str = "table") -> str:
    """Format a ``Views.query`` result as ``table`` (the monitor document's headers), ``json`` or ``csv``.

    JSON of a statistics view is one object ``{statistic_key: value}`` (docs/MONITORING.md, Output formats); JSON of
    any other view is a list of objects with the chosen snake_case keys.
    """
    columns, rows = result["columns"], result["rows"]
    if fmt == "json":
        if result["view"] == "statistics" and "statistic" in columns and "value" in columns:
            return dumps({row["statistic"]: row["value"] for row in rows})
        return dumps(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[text_cell(row[c]) for c in columns] for row in rows])
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ViewError(f"unknown format {fmt!r}; use table, json or csv")
    shown = [dict(row) for row in rows]
    if result["view"] == "statistics" and "statistic" in columns:
        from ikecore.monitor.counters import Statistic, display_name  # tables only: JSON clients need none of it

        stat_keys = {s.key for s in Statistic}
        for row in shown:  # tables show the IP Security Monitor document's names; JSON and CSV keep the keys
            row["statistic"] = display_name(row["statistic"]) if row["statistic"] in stat_keys else \
                row["statistic"].replace("_", " ").title().replace("Sas", "SAs").replace("Spi", "SPI")
    return text_table([column_title(c) for c in columns], shown, columns)


def text_table(headers: list[str], rows: list[dict[str, Any]], columns: Any) -> str:
    """Rows as a plain text table: a header line, a rule, one line per row (cells as
    ``ikecore.monitor.formats.text_cell`` writes them: None blank, lists joined with ``;``)."""
    cells = [[text_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)

