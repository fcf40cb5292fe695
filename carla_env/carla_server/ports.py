"""Deterministic, probed ports per server slot (RLlib worker x vector index).

Slot k uses RPC port base + 3k (CARLA also takes RPC+1 for streaming and RPC+2 for its secondary
server) and Traffic Manager port tm_base + k, a separate range. A port another process holds moves
the slot by a whole stride, so our own slots never collide with each other.

A launched server leases its ports: a lock file per port, held until the server stops, so envs that
share a slot (RLlib gives every env of a runner the same EnvContext) never pick the same free ports
in the moment before either server binds them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def _candidates(rpc_base: int, tm_base: int, slot: int, attempts: int):
    """The slot's ports, then the same slot a stride further on, while they stay below 65536."""
    for attempt in range(attempts):
        k = slot + attempt * STRIDE_SLOTS
        rpc = rpc_base + PORTS_PER_SERVER * k
        ports = Ports(rpc, rpc + 1, rpc + 2, tm_base + k)
        if max(ports.all()) >= 65536:
            return
        yield ports


def _no_ports(slot: int, attempts: int, rpc_base: int, tm_base: int) -> PortError:
    return PortError(
        f"no free ports for CARLA server slot {slot} after {attempts} tries from RPC {rpc_base} / TM {tm_base}; "
        "set simulator.carla.port and tm_port to a free range"
    )


def pick_ports(rpc_base: int, tm_base: int, slot: int, attempts: int = ATTEMPTS) -> Ports:
    for ports in _candidates(rpc_base, tm_base, slot, attempts):
        if all(is_free(p) for p in ports.all()):
            return ports
    raise _no_ports(slot, attempts, rpc_base, tm_base)


def lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"carla_env-ports-{os.getuid()}"


class PortLease:
    """Ports held by this process: an exclusive flock per port, released by release() (idempotent)."""

    def __init__(self, ports: Ports, fds: list[int]) -> None:
        self.ports, self._fds = ports, fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the file drops its flock
        self._fds = []


def _lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lease_ports(
    rpc_base: int, tm_base: int, slot: int, attempts: int = ATTEMPTS, locks: Path | None = None
) -> PortLease:
    """pick_ports, skipping any port another env (this process or another) holds a lease on."""
    locks = locks or lock_dir()
    locks.mkdir(parents=True, exist_ok=True)
    for ports in _candidates(rpc_base, tm_base, slot, attempts):
        fds = []
        for port in ports.all():
            fd = _lock(locks / f"{port}.lock")
            if fd is None:
                break
            fds.append(fd)
        lease = PortLease(ports, fds)
        if len(fds) == len(ports.all()) and all(is_free(p) for p in ports.all()):
            return lease
        lease.release()
    raise _no_ports(slot, attempts, rpc_base, tm_base)
