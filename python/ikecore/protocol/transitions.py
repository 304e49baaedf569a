"""The rows of the exchanges' transition tables (Main, Aggressive and Quick Mode).

Design note
-----------
Each exchange is a table ``(state, exchange type) -> Row``: the state names the message the
SA (or Quick Mode exchange) waits for, and the row says how to handle it and what follows.
Besides the handler, the next state and the payloads the message must carry, a row holds
the two reliability rules the engine applies around it (RFC 2408 section 5, RFC 2409
section 5):

* ``send``: how the message its handler returns goes out. ``REQUEST``: it asks for an
  answer, so it is retransmitted until the peer's next message arrives. ``REPLY``: it is
  sent once and kept, to be sent again when the peer repeats the message this row handled.
  ``NOTHING``: the row ends the exchange.
* ``answers_repeat``: whether a repeat of the message this row handled (the peer did not
  hear our answer) is answered by resending our last message, or ignored because our own
  retransmission timer runs. A row that sends ``NOTHING`` ends the exchange and never
  answers a repeat: the last message we sent was a request the peer has already answered,
  and sending it again would make the peer answer again, back and forth until the
  negotiation timeout.

``handled_by`` indexes a table the other way: which row brought an SA of a role to its
state, that is, which row handled the last message it received. The initiator sends the
odd-numbered messages of every exchange and the responder the even-numbered ones, so a
row's role follows from its message number.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ikecore.sa import Role

__all__ = ["Send", "Row", "handled_by"]

S = TypeVar("S", bound=enum.Enum)
H = TypeVar("H")


class Send(enum.Enum):
    """How the message a row's handler returns goes out."""

    NOTHING = "nothing"  # the exchange is over
    REQUEST = "request"  # retransmitted until the peer answers
    REPLY = "reply"      # sent once, again only when the peer repeats its message


@dataclass(frozen=True, slots=True)
class Row(Generic[S, H]):
    """One transition: handle message ``message_number``, move to ``next_state``.

    ``required``: payload types the message must carry. ``encrypted``: the message arrives
    under the SA's keys (Aggressive Mode also accepts message 3 in the clear).
    """

    handler: H
    next_state: S
    required: tuple[int, ...]
    message_number: int
    send: Send
    answers_repeat: bool
    encrypted: bool = False


def handled_by(table: Mapping[tuple[S, int], Row[S, H]]) -> dict[tuple[Role, S], Row[S, H]]:
    """``(role, state) -> the row that led there``: the rules for a repeat of the last message."""
    index: dict[tuple[Role, S], Row[S, H]] = {}
    for row in table.values():
        assert not (row.send is Send.NOTHING and row.answers_repeat), "a final row answers no repeat"
        role = Role.RESPONDER if row.message_number % 2 else Role.INITIATOR
        assert (role, row.next_state) not in index, "two rows lead one role to the same state"
        index[(role, row.next_state)] = row
    return index
