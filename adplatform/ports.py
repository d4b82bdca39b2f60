"""Free TCP ports for servers this project starts (tests, the bench, Triton, BentoML).

A port from ``bind(0)`` lies inside the kernel's ephemeral range, the range every
outgoing connection on the machine takes its local port from. A server that needs
seconds before it binds (tritonserver loading its models, a decision service building
its world) can find such a port taken by then: a CI run lost a Triton server's HTTP
port that way. :func:`free_ports` draws below that range instead. Standard library only.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000            # below: well-known and registered services' ports


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux's default
    when it cannot be read)."""
    try:
        lo, hi = (int(x) for x in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return lo, hi


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago, drawn at random between
    10,000 and the start of the ephemeral range, each checked with a bind; ``bind(0)``
    when the range starts too low to leave room."""
    lo, _ = ephemeral_ports()
    rng = secrets.SystemRandom()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(100 * count if lo > _LOWEST_PORT + 1000 else 0):
            if len(sockets) == count:
                break
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.bind((host, rng.randrange(_LOWEST_PORT, lo)))
            except OSError:                  # in use (or in TIME_WAIT): draw another
                s.close()
                continue
            sockets.append(s)
        while len(sockets) < count:
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port as :func:`free_ports` draws them."""
    return free_ports(1, host)[0]


__all__ = ["ephemeral_ports", "free_port", "free_ports"]
