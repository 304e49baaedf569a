"""Kernel steering: a SO_REUSEPORT socket group that hands each datagram to the worker
that holds its ISAKMP SA.

Design note
-----------
A gateway of N worker processes binds, per listen endpoint, N UDP sockets with
SO_REUSEPORT (socket k belongs to worker k) and attaches one classic BPF program to the
group (``SO_ATTACH_REUSEPORT_CBPF``). For every datagram the kernel runs the program on
the UDP payload and delivers the datagram to the socket whose index it returns:

    ld   [0]          A = payload bytes 0..3 (big-endian)
    jeq  #0           the non-ESP marker (RFC 3948 section 2.2)?
      ld [4]            yes: CKY-I starts after it
    mod  #N           A = (first four bytes of CKY-I) mod N
    ret  A

which is ``ikecore.steering.worker_of(CKY-I, N)``: every datagram of an SA reaches the
same worker whatever the peer's address and port do (NAT-T floating to port 4500, a
NAT that rebinds), the way QUIC servers route by connection ID.

Off port 500 IKE carries the marker, and a datagram without it is ESP (steered by its
SPI, to some worker) or a one-byte NAT keepalive (the load beyond the payload ends the
program with 0: socket 0); any worker may take those. On port 500 there is never a
marker (``wire.marker_allowed``): four leading zero bytes there are the start of CKY-I,
so a group bound to port 500 gets the program without the marker test (rows 1 and 2),
and the program reads the cookie where the engine does. An index the group does not
have (while it is being bound) makes the kernel fall back to its 4-tuple hash.

The kernel numbers a group's sockets in bind order and, when one is closed, moves the
last socket into its slot: the parent process binds the sockets in order, keeps every
one of them open for the gateway's life, and a restarted worker gets its old socket
back (``ikecore.gateway.workers``).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

from ikecore.events import Address
from ikecore.wire import IKE_PORT

__all__ = ["SO_ATTACH_REUSEPORT_CBPF", "steering_program", "attach_steering", "bind_group"]

#: Linux ``SO_ATTACH_REUSEPORT_CBPF`` (asm-generic/socket.h; Python's socket module lacks it).
SO_ATTACH_REUSEPORT_CBPF = 51

# classic BPF opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20      # BPF_LD | BPF_W | BPF_ABS: A = ntohl(payload[k:k+4])
_JEQ_K = 0x05 | 0x10 | 0x00         # BPF_JMP | BPF_JEQ | BPF_K
_MOD_K = 0x04 | 0x90 | 0x00         # BPF_ALU | BPF_MOD | BPF_K: A %= k (unsigned)
_RET_A = 0x06 | 0x10                # BPF_RET | BPF_A

MARKER_LENGTH = 4   # the non-ESP marker: four zero bytes


def steering_program(workers: int, marker: bool = True) -> list[tuple[int, int, int, int]]:
    """The classic BPF program (``struct sock_filter`` rows: code, jt, jf, k) that returns
    ``worker_of(CKY-I, workers)`` for a datagram's UDP payload (see the module note);
    ``marker=False`` (a group on port 500) reads CKY-I at offset 0 whatever it holds."""
    if not 1 <= workers <= 0xFFFF:
        raise ValueError(f"workers must be between 1 and 65535, not {workers}")
    marker_rows = [
        (_JEQ_K, 0, 1, 0),                  # 1: A == 0 (marker) ? 2 : 3
        (_LD_W_ABS, 0, 0, MARKER_LENGTH),   # 2: A = payload[4:8], CKY-I after the marker
    ] if marker else []
    return [
        (_LD_W_ABS, 0, 0, 0),               # 0: A = payload[0:4]
        *marker_rows,
        (_MOD_K, 0, 0, workers),            # A %= workers
        (_RET_A, 0, 0, 0),                  # deliver to socket A
    ]


def attach_steering(sock: socket.socket, workers: int, marker: bool = True) -> None:
    """Attach the steering program to ``sock``'s SO_REUSEPORT group (the whole group
    uses it; attaching to a socket not yet bound prepares the group it will start)."""
    rows = steering_program(workers, marker)
    program = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *row) for row in rows))
    fprog = struct.pack("@HP", len(rows), ctypes.addressof(program))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_group(local: Address, workers: int) -> list[socket.socket]:
    """Bind ``workers`` UDP sockets on ``local`` (port 0: one ephemeral port for all) with
    SO_REUSEPORT, in order, the steering program attached: socket k is worker k's.

    The caller owns the sockets and must keep all of them open while any is in use. A
    port some other socket holds is refused (EADDRINUSE) rather than joined: a group with
    strangers in it would not number its sockets as the workers."""
    family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
    if local[1] != 0:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # without SO_REUSEPORT
            probe.bind(local)
    group: list[socket.socket] = []
    try:
        address = local
        for index in range(workers):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if index == 0:
                attach_steering(sock, workers, local[1] != IKE_PORT)   # in place before the first datagram can arrive
            sock.bind(address)
            if index == 0:
                address = (local[0], sock.getsockname()[1])
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group
