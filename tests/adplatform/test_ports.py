"""Free ports for the servers the project starts: drawn below the ephemeral range."""

from __future__ import annotations

import socket

from adplatform.ports import ephemeral_ports, free_ports


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    # A bind(0) port is in the range outgoing connections draw from: one of them took a
    # test server's HTTP port while tritonserver was still loading its models.
    lo, _ = ephemeral_ports()
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert all(10_000 <= p < lo for p in ports) or lo <= 11_000
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
