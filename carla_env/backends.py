"""The one place a backend is chosen and built.

`backend: auto` is resolved once per run (`pin_backend`), the reason printed by the caller, and the
concrete choice written into the config that is saved with the run, so `infer.py`, `--restore` and
remote env runners build the same backend as training did.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from carla_env.config import Config, ConfigError, SimulatorConfig
from carla_env.simulator import SimulatorCore

log = logging.getLogger(__name__)
DEFAULT_CARLA_PORT = 2000


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "embedded" or "carla"
    reason: str

    def __str__(self) -> str:
        return f"backend: {self.name} ({self.reason})"


def _carla_server_reachable(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_backend(config: SimulatorConfig) -> BackendChoice:
    """Resolve `auto`: carla when CARLA is installed or a server answers on the configured port, else embedded."""
    if config.backend != "auto":
        return BackendChoice(config.backend, "set in the config")
    root = config.carla.carla_root or os.environ.get("CARLA_ROOT")
    if root:
        return BackendChoice("carla", f"auto: CARLA install at {root}")
    host, port = config.carla.host, config.carla.port
    if _carla_server_reachable(host, port):
        return BackendChoice("carla", f"auto: a CARLA server answers on {host}:{port}")
    return BackendChoice(
        "embedded", f"auto: no CARLA install (CARLA_ROOT unset) and no server on {host}:{port}"
    )


def core_class(backend: str) -> type[SimulatorCore]:
    if backend == "embedded":
        from carla_env.embedded.core import EmbeddedCore

        return EmbeddedCore
    if backend == "carla":
        from carla_env.carla_server.core import CarlaCore

        return CarlaCore
    raise ValueError(f"no backend {backend!r}; use embedded or carla")


def check_config_for_backend(config: Config, backend: str, source: str = "config") -> None:
    """What the config asks of the backend that will run it: its sensors, a server to launch."""
    server = config.simulator.carla
    if backend == "carla" and server.launch and not (server.carla_root or os.environ.get("CARLA_ROOT")):
        raise ConfigError(
            f"config error in {source}: simulator.carla.carla_root: launching a CARLA server needs CARLA_ROOT "
            "(or this key); or set simulator.carla.launch: false to attach to a running server",
            "simulator.carla.carla_root",
        )
    if backend == "carla" and not server.launch and config.training.envs_per_runner > 1:
        raise ConfigError(
            f"config error in {source}: simulator.carla.launch: false attaches all "
            f"training.envs_per_runner: {config.training.envs_per_runner} envs of a runner to one server; "
            "set envs_per_runner: 1 or launch: true",
            "simulator.carla.launch",
        )
    offered = core_class(backend).sensor_types
    for name, sensor in config.experiment.sensors.items():
        if sensor.type not in offered:
            hint = "; cameras, lidar and radar need backend: carla" if backend == "embedded" else ""
            raise ConfigError(
                f"config error in {source}: experiment.sensors.{name}.type: {sensor.type!r} is not available on "
                f"the {backend} backend (it has {', '.join(offered)}){hint}",
                f"experiment.sensors.{name}.type",
            )


def pin_backend(config: Config, source: str = "config") -> tuple[Config, BackendChoice]:
    """The config with `auto` replaced by the concrete backend, checked against it; and why that one."""
    choice = choose_backend(config.simulator)
    check_config_for_backend(config, choice.name, source)
    pinned = config.model_copy(
        update={"simulator": config.simulator.model_copy(update={"backend": choice.name})}
    )
    return pinned, choice


def make_core(
    config: SimulatorConfig,
    hero_blueprint: str = "vehicle.tesla.model3",
    slot: int = 0,
    rendering: bool = False,
) -> SimulatorCore:
    """Build the config's backend. `slot` numbers the server among this machine's envs (its ports);
    `rendering`: a camera needs the GPU. An `auto` config is resolved here, with its reason logged."""
    backend = config.backend
    if backend == "auto":
        choice = choose_backend(config)
        log.info("%s", choice)
        backend = choice.name
    if backend == "embedded":
        return core_class(backend)(config, hero_blueprint)
    if backend == "carla":  # the client in a child process unless simulator.carla.isolate_client: false
        from carla_env.carla_server.isolated import make_carla_core

        return make_carla_core(config, hero_blueprint, slot=slot, rendering=rendering)
    return core_class(backend)(config, hero_blueprint, slot=slot, rendering=rendering)
