"""Deterministic, probed ports per server slot (RLlib worker x vector index).

Slot k uses RPC port base + 3k (CARLA also takes RPC+1 for streaming and RPC+2 for its secondary
server) and Traffic Manager port tm_base + k, a separate range. A port another process holds moves
the slot by a whole stride, so our own slots never collide with each other.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

PORTS_PER_SERVER = 3
STRIDE_SLOTS = 64  # a clash shifts by this many slots
ATTEMPTS = 16


class PortError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    rpc: int
    streaming: int
    secondary: int
    tm: int

    def all(self) -> tuple[int, ...]:
        return self.rpc, self.streaming, self.secondary, self.tm


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Bind test as the server binds (asio sets SO_REUSEADDR): a listener blocks it, TIME_WAIT does not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(rpc_base: int, tm_base: int, slot: int, attempts: int = ATTEMPTS) -> Ports:
    for attempt in range(attempts):
        k = slot + attempt * STRIDE_SLOTS
        rpc = rpc_base + PORTS_PER_SERVER * k
        ports = Ports(rpc, rpc + 1, rpc + 2, tm_base + k)
        if max(ports.all()) < 65536 and all(is_free(p) for p in ports.all()):
            return ports
    raise PortError(
        f"no free ports for CARLA server slot {slot} after {attempts} tries from RPC {rpc_base} / TM {tm_base}; "
        "set simulator.carla.port and tm_port to a free range"
    )
