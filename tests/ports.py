"""Free TCP ports for servers the tests and benchmarks start.

Ports are drawn from 20000-32767: above Ray's worker ports (10002-19999 by default) and below
the kernel's ephemeral range (32768-60999 here), where Ray's own daemons and every outgoing
connection take theirs. A port drawn from the ephemeral range can be free when drawn and taken
minutes later when Serve binds it: a CI run lost its whole e2e session when the gRPC port drawn
was 52365, the port Ray's dashboard agent listens on.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32767
_rng = random.SystemRandom()
_given: set[int] = set()


def _bindable(port: int) -> bool:
    # Serve binds gRPC on [::] and HTTP on its host: probe the wildcard address, both families.
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr, port))
        except OSError:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now, outside Ray's and the kernel's dynamic ranges, and not
    handed out before by this process."""
    for _ in range(200):
        port = _rng.randint(LOW, HIGH)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH} after 200 draws")
