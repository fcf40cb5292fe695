"""Sensor factory keyed by CARLA blueprint names; data delivered as {name: (frame, data)} for the tick's frame."""

from __future__ import annotations

import carla
import numpy as np

from carla_env.sensors.birdview import BirdviewRenderer, BirdviewSpec, birdview_from_attributes, pack
from carla_env.sensors.scene import scene_from_world

EVENT_SENSORS = ("sensor.other.collision", "sensor.other.lane_invasion")
BIRDVIEW = "sensor.birdview"
SUPPORTED = (*EVENT_SENSORS, BIRDVIEW)  # the embedded backend's
# The CARLA backend's, besides SUPPORTED: streams with data every frame, and the obstacle events.
CARLA_STREAMS = (
    "sensor.camera.rgb",
    "sensor.camera.depth",
    "sensor.camera.semantic_segmentation",
    "sensor.lidar.ray_cast",
    "sensor.other.radar",
    "sensor.other.gnss",
    "sensor.other.imu",
)
CARLA_EVENTS = (*EVENT_SENSORS, "sensor.other.obstacle")
POSE_KEYS = ("x", "y", "z", "roll", "pitch", "yaw")  # mounting on the hero, not blueprint attributes


class EventSensor:
    """A CARLA event sensor (collision, lane invasion): the events of each frame, matched by frame id."""

    def __init__(self, name: str, world, hero, blueprint_id: str) -> None:
        self.name = name
        bp = world.get_blueprint_library().find(blueprint_id)
        self.actor = world.spawn_actor(bp, carla.Transform(), attach_to=hero)
        self._events: dict[int, list] = {}
        self.actor.listen(lambda event: self._events.setdefault(event.frame, []).append(event))

    def read(self, frame: int) -> tuple[int, list]:
        events = self._events.pop(frame, [])
        self._events = {f: e for f, e in self._events.items() if f > frame}  # drop stale frames
        return frame, events

    def destroy(self) -> None:
        if self.actor.is_alive:
            self.actor.stop()
            self.actor.destroy()


class StreamSensor:
    """A CARLA sensor with data every tick (camera, lidar, radar, GNSS, IMU), matched by frame id:
    read(frame) waits (bounded) for that frame's measurement and drops older ones."""

    def __init__(
        self, name: str, world, hero, blueprint_id: str, attributes: dict, timeout: float = 10.0
    ) -> None:
        import threading

        self.name, self.timeout = name, timeout
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
            if not self._ready.wait_for(lambda: frame in self._data, self.timeout):
                raise TimeoutError(f"sensor {self.name!r}: no data for frame {frame} within {self.timeout} s")
            data = self._data.pop(frame)
            self._data = {f: d for f, d in self._data.items() if f > frame}
        return frame, data

    def destroy(self) -> None:
        if self.actor.is_alive:
            self.actor.stop()
            self.actor.destroy()


class BirdviewSensor:
    """The shared BEV renderer fed from the world: the embedded world's arrays, or the CARLA API."""

    def __init__(
        self, name: str, world, hero, lanes, spec: BirdviewSpec, packed: bool, delta_seconds: float
    ) -> None:
        self.name = name
        self.world, self.hero, self.lanes = world, hero, lanes
        self.renderer = BirdviewRenderer(lanes, spec, delta_seconds)
        self.packed = packed
        self.last: np.ndarray | None = None  # the newest unpacked observation

    def read(self, frame: int) -> tuple[int, np.ndarray]:
        if hasattr(self.world, "birdview_scene"):
            scene = self.world.birdview_scene(self.hero)
        else:
            scene = scene_from_world(self.world, self.hero, self.lanes)
        self.last = self.renderer(scene)
        return frame, pack(self.last) if self.packed else self.last

    def colour_frame(self) -> np.ndarray | None:
        """RGB rendering of the newest observation, for people (videos, previews)."""
        return None if self.last is None else self.renderer.colorize(self.last)

    def destroy(self) -> None:
        self.renderer.reset()
        self.last = None


def make_sensor(name: str, blueprint_id: str, attributes: dict, world, hero, lanes, delta_seconds: float):
    real_carla = not hasattr(world, "birdview_scene")
    if blueprint_id in EVENT_SENSORS or (real_carla and blueprint_id in CARLA_EVENTS):
        return EventSensor(name, world, hero, blueprint_id)
    if real_carla and blueprint_id in CARLA_STREAMS:
        return StreamSensor(name, world, hero, blueprint_id, attributes)
    if blueprint_id == BIRDVIEW:
        spec, packed = birdview_from_attributes(attributes)
        return BirdviewSensor(name, world, hero, lanes, spec, packed, delta_seconds)
    raise ValueError(
        f"sensor {name!r}: blueprint {blueprint_id!r} is not available on this backend; use one of {', '.join(SUPPORTED + (CARLA_STREAMS + CARLA_EVENTS if real_carla else ()))}"
    )
