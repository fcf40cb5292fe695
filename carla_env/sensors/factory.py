"""Sensor factory keyed by CARLA blueprint names; data delivered as {name: (frame, data)} for the tick's frame."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import carla
import numpy as np

from carla_env.sensors.birdview import BirdviewRenderer, BirdviewSpec, pack
from carla_env.simulator import BIRDVIEW, STREAM_SENSORS

if TYPE_CHECKING:
    from carla_env.config import SensorConfig
    from carla_env.simulator import SimulatorCore

POSE_KEYS = ("x", "y", "z", "roll", "pitch", "yaw")  # mounting on the hero, not blueprint attributes


class EventSensor:
    """A CARLA event sensor (collision, lane invasion): every unread event up to the frame asked for.

    Events come on LibCarla's threads and late: lane invasions are computed on the client after
    `world.tick()` returns, collisions arrive on their own stream. An event of frame N that lands after
    read(N) is returned by read(N+1), never dropped; a lock guards the list the callback appends to.
    """

    def __init__(self, name: str, world, hero, blueprint_id: str) -> None:
        self.name = name
        bp = world.get_blueprint_library().find(blueprint_id)
        self.actor = world.spawn_actor(bp, carla.Transform(), attach_to=hero)
        self._lock = threading.Lock()
        self._unread: list = []
        self.actor.listen(self._on_event)

    def _on_event(self, event) -> None:
        with self._lock:
            self._unread.append(event)

    def read(self, frame: int) -> tuple[int, list]:
        with self._lock:
            due = [e for e in self._unread if e.frame <= frame]
            self._unread = [e for e in self._unread if e.frame > frame]
        return frame, sorted(due, key=lambda e: e.frame)

    def destroy(self) -> None:
        if self.actor.is_alive:
            self.actor.stop()
            self.actor.destroy()


class StreamSensor:
    """A CARLA sensor with data every tick (camera, lidar, radar, GNSS, IMU), matched by frame id:
    read(frame) waits (bounded) for that frame's measurement and drops older ones. A frame that never
    comes means a hung server or a broken stream: `restart(reason)` replaces the server and raises
    SimulatorRestarted (the env truncates the episode); without it, a TimeoutError."""

    def __init__(
        self,
        name: str,
        world,
        hero,
        blueprint_id: str,
        attributes: dict,
        timeout: float = 10.0,
        restart: Callable[[str], NoReturn] | None = None,
    ) -> None:
        self.name, self.timeout, self._restart = name, timeout, restart
        bp = world.get_blueprint_library().find(blueprint_id)
        for key, value in attributes.items():
            if key not in POSE_KEYS:
                bp.set_attribute(key, str(value))
        pose = {k: float(attributes.get(k, 0.0)) for k in POSE_KEYS}
        at = carla.Transform(
            carla.Location(pose["x"], pose["y"], pose["z"]),
            carla.Rotation(pose["pitch"], pose["yaw"], pose["roll"]),
        )
        self.actor = world.spawn_actor(bp, at, attach_to=hero)
        self._data: dict[int, object] = {}
        self._ready = threading.Condition()
        self.actor.listen(self._on_data)

    def _on_data(self, measurement) -> None:
        with self._ready:
            self._data[measurement.frame] = measurement
            self._ready.notify_all()

    def read(self, frame: int) -> tuple[int, object]:
        with self._ready:
            arrived = self._ready.wait_for(lambda: frame in self._data, self.timeout)
            if arrived:
                data = self._data.pop(frame)
                self._data = {f: d for f, d in self._data.items() if f > frame}
        if arrived:
            return frame, data
        reason = f"sensor {self.name!r}: no data for frame {frame} within {self.timeout} s"
        if self._restart is not None:
            self._restart(reason)
        raise TimeoutError(reason)

    def destroy(self) -> None:
        if self.actor.is_alive:
            self.actor.stop()
            self.actor.destroy()


class BirdviewSensor:
    """The shared BEV renderer, fed with the backend's scene of the hero (same pixels on every backend)."""

    def __init__(self, name: str, core: SimulatorCore, spec: BirdviewSpec, delta_seconds: float) -> None:
        self.name, self.core, self.spec = name, core, spec
        self.renderer = BirdviewRenderer(core.town.lanes, spec, delta_seconds)
        self.last: np.ndarray | None = None  # the newest unpacked observation

    def read(self, frame: int) -> tuple[int, np.ndarray]:
        self.last = self.renderer(self.core.birdview_scene(self.core.hero))
        return frame, pack(self.last) if self.spec.packed else self.last

    def colour_frame(self) -> np.ndarray | None:
        """RGB rendering of the newest observation, for people (videos, previews)."""
        return None if self.last is None else self.renderer.colorize(self.last)

    def destroy(self) -> None:
        self.renderer.reset()
        self.last = None


def make_sensor(name: str, config: SensorConfig, core: SimulatorCore, delta_seconds: float):
    """The sensor `config.type` on the core's hero; a type the backend does not offer is a ValueError."""
    kind = config.type
    if kind not in core.sensor_types:
        raise ValueError(
            f"sensor {name!r}: {kind!r} is not available on the {core.backend} backend; "
            f"use one of {', '.join(core.sensor_types)}"
        )
    if kind == BIRDVIEW:
        return BirdviewSensor(name, core, config, delta_seconds)
    if kind in STREAM_SENSORS:
        return StreamSensor(name, core.world, core.hero, kind, config.model_extra or {}, restart=core.restart)
    return EventSensor(name, core.world, core.hero, kind)
