"""The backend protocol every simulator implements, and `backend: auto`."""

from __future__ import annotations

import os
import socket
from typing import Protocol, runtime_checkable

import carla

from carla_env.config import SimulatorConfig

DEFAULT_CARLA_PORT = 2000


class SimulatorRestarted(RuntimeError):
    """A backend replaced its crashed or hung simulator; the running episode is over (reason in the message)."""


@runtime_checkable
class SimulatorCore(Protocol):
    """What CarlaEnv and experiments see of a backend: CARLA-API objects and a tick."""

    world: object  # carla.World or the embedded world
    map: carla.Map
    hero: object  # carla.Vehicle or the embedded vehicle

    def reset(self, seed: int | None = None) -> None: ...

    def tick(self, control: carla.VehicleControl) -> int: ...

    def close(self) -> None: ...


def _carla_server_reachable(
    host: str = "localhost", port: int = DEFAULT_CARLA_PORT, timeout: float = 0.2
) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def select_backend(requested: str) -> tuple[str, str]:
    """Resolve 'auto' to a concrete backend; returns (backend, why) so callers can say which they picked."""
    if requested != "auto":
        return requested, f"backend '{requested}' requested in the config"
    if os.environ.get("CARLA_ROOT"):
        return "carla", f"CARLA_ROOT={os.environ['CARLA_ROOT']} is set"
    if _carla_server_reachable():
        return "carla", f"a CARLA server answers on localhost:{DEFAULT_CARLA_PORT}"
    return "embedded", "no CARLA install (CARLA_ROOT unset) and no server on localhost:2000"


def make_core(
    config: SimulatorConfig,
    hero_blueprint: str = "vehicle.tesla.model3",
    slot: int = 0,
    rendering: bool = False,
) -> SimulatorCore:
    """`slot` numbers the server among this machine's envs (its ports); `rendering`: a camera needs the GPU."""
    backend, _ = select_backend(config.backend)
    if backend == "embedded":
        from carla_env.embedded.core import EmbeddedCore

        return EmbeddedCore(config, hero_blueprint)
    from carla_env.carla_server.core import CarlaCore

    return CarlaCore(config, hero_blueprint, slot=slot, rendering=rendering)
