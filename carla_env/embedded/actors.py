"""Actor facades of the embedded world, answering the CARLA API with real carla data types.

Actors hold no state of their own: they read the world's arrays, so the hot
path never touches Python objects.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import carla
import numpy as np

if TYPE_CHECKING:
    from carla_env.embedded.world import EmbeddedWorld

_LIGHT_STATES = {
    0: carla.TrafficLightState.Red,
    1: carla.TrafficLightState.Yellow,
    2: carla.TrafficLightState.Green,
}


class Actor:
    def __init__(self, world: EmbeddedWorld, actor_id: int, type_id: str, attributes: dict[str, str]) -> None:
        self._world = world
        self.id = actor_id
        self.type_id = type_id
        self.attributes = dict(attributes)
        self.parent = None
        self._alive = True

    @property
    def is_alive(self) -> bool:
        return self._alive

    def get_world(self) -> EmbeddedWorld:
        return self._world

    def _check_alive(self) -> None:
        """CARLA's error for a destroyed actor: its world row may now belong to another actor."""
        if not self._alive:
            raise RuntimeError(
                f"trying to operate on a destroyed actor; an actor's function was called, but the actor "
                f"is already destroyed (id={self.id}, {self.type_id})"
            )

    def destroy(self) -> bool:
        if not self._alive:
            return False
        self._world._destroy(self)
        self._alive = False
        return True

    def _pose(self) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def get_transform(self) -> carla.Transform:
        p, yaw = self._pose()
        return carla.Transform(
            carla.Location(float(p[0]), float(p[1]), float(p[2])), carla.Rotation(yaw=math.degrees(yaw))
        )

    def get_location(self) -> carla.Location:
        p, _ = self._pose()
        return carla.Location(float(p[0]), float(p[1]), float(p[2]))

    def get_velocity(self) -> carla.Vector3D:
        return carla.Vector3D()

    def get_acceleration(self) -> carla.Vector3D:
        return carla.Vector3D()

    def get_angular_velocity(self) -> carla.Vector3D:
        return carla.Vector3D()

    def __repr__(self) -> str:
        return f"Actor(id={self.id}, type={self.type_id})"


class Vehicle(Actor):
    """A vehicle: the world's arrays at row `_row` of the hero or traffic block."""

    def __init__(self, world, actor_id, type_id, attributes, extent: tuple[float, float, float]) -> None:
        super().__init__(world, actor_id, type_id, attributes)
        self.bounding_box = carla.BoundingBox(
            carla.Location(0.0, 0.0, extent[2]), carla.Vector3D(extent[0], extent[1], extent[2])
        )
        self._control = carla.VehicleControl()

    def _pose(self):
        self._check_alive()
        return self._world._vehicle_pose(self)

    def _speed_vector(self, value: float) -> carla.Vector3D:
        _, yaw = self._pose()
        return carla.Vector3D(float(value * np.cos(yaw)), float(value * np.sin(yaw)), 0.0)

    def get_velocity(self) -> carla.Vector3D:
        self._check_alive()
        return self._speed_vector(self._world._vehicle_speed(self))

    def get_acceleration(self) -> carla.Vector3D:
        self._check_alive()
        return self._speed_vector(self._world._vehicle_accel(self))

    def get_angular_velocity(self) -> carla.Vector3D:
        self._check_alive()
        return carla.Vector3D(0.0, 0.0, float(np.degrees(self._world._vehicle_yaw_rate(self))))

    def apply_control(self, control: carla.VehicleControl) -> None:
        if not isinstance(control, carla.VehicleControl):
            raise TypeError(f"apply_control needs a carla.VehicleControl, got {type(control).__name__}")
        self._check_alive()
        self._world._apply_control(self, control)
        self._control = control

    def get_control(self) -> carla.VehicleControl:
        return self._control

    def get_speed_limit(self) -> float:
        return float(self._world._vehicle_speed_limit(self) * 3.6)

    def get_traffic_light(self):
        return self._world._vehicle_traffic_light(self)

    def get_traffic_light_state(self) -> carla.TrafficLightState:
        light = self.get_traffic_light()
        return light.get_state() if light is not None else carla.TrafficLightState.Green

    def is_at_traffic_light(self) -> bool:
        return self.get_traffic_light() is not None

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        if enabled:
            raise NotImplementedError(
                "the embedded world drives NPCs itself; the hero is driven by its controls"
            )


class Walker(Actor):
    """A pedestrian: the world's walker arrays at row `_row`. Its location is the body's centre (as in
    CARLA, about a metre above the ground) and its bounding box is centred there."""

    def __init__(self, world, actor_id, type_id, attributes, extent: tuple[float, float, float]) -> None:
        super().__init__(world, actor_id, type_id, attributes)
        self.bounding_box = carla.BoundingBox(carla.Location(), carla.Vector3D(*extent))
        self._control = carla.WalkerControl()
        self._controller: WalkerAIController | None = None

    def _pose(self):
        self._check_alive()
        return self._world._walker_pose(self)

    def get_velocity(self) -> carla.Vector3D:
        yaw = self._pose()[1]  # first: it checks the walker is alive
        v = self._world._walker_speed(self)
        return carla.Vector3D(float(v * np.cos(yaw)), float(v * np.sin(yaw)), 0.0)

    def apply_control(self, control: carla.WalkerControl) -> None:
        if not isinstance(control, carla.WalkerControl):
            raise TypeError(
                f"a walker's apply_control needs a carla.WalkerControl, got {type(control).__name__}"
            )
        self._check_alive()
        self._control = control
        if self._controller is None or not self._controller._running:  # a running AI overrides it
            self._world._walker_steer(self, control)

    def get_control(self) -> carla.WalkerControl:
        return self._control


class WalkerAIController(Actor):
    """`controller.ai.walker`, attached to its walker: start, go_to_location, set_max_speed, stop."""

    def __init__(self, world, actor_id, type_id, attributes, parent: Walker) -> None:
        super().__init__(world, actor_id, type_id, attributes)
        self.parent = parent
        parent._controller = self
        self._running = False

    def _pose(self):
        return self.parent._pose()

    def start(self) -> None:
        self._check_alive()
        self._running = True
        self._world._walker_start(self.parent)

    def stop(self) -> None:
        self._running = False
        if self.parent.is_alive:
            self._world._walker_stop(self.parent)

    def go_to_location(self, destination: carla.Location) -> None:
        self._check_alive()
        if not self._running:
            return  # as in CARLA: a controller not started has no navigation agent
        self._world._walker_go_to(self.parent, destination)

    def set_max_speed(self, speed: float = 1.4) -> None:
        self._check_alive()
        self._world._walker_max_speed(self.parent, float(speed))


class TrafficLight(Actor):
    def __init__(self, world, actor_id, index: int, location: np.ndarray) -> None:
        super().__init__(world, actor_id, "traffic.traffic_light", {"role_name": "traffic_light"})
        self.index = index
        self._location = location
        self.trigger_volume = carla.BoundingBox(carla.Location(), carla.Vector3D(1.0, 1.0, 1.0))

    def _pose(self):
        return self._location, 0.0

    def get_state(self) -> carla.TrafficLightState:
        return _LIGHT_STATES[int(self._world._light_state[self.index])]

    @property
    def state(self) -> carla.TrafficLightState:
        return self.get_state()

    def get_opendrive_id(self) -> str:
        return str(int(self._world.town.lanes.light_id[self.index]))

    def get_stop_waypoints(self) -> list[carla.Waypoint]:
        """The map's waypoints at the stop line of each lane this light guards: half a metre before the
        lane's end, where the junction begins (CARLA's: the last waypoint before the junction)."""
        g, cmap = self._world.town.lanes, self._world.town.map
        lanes = np.flatnonzero(g.lane_light == self.index)
        pos, _ = g.interpolate(lanes, np.maximum(g.lane_length[lanes] - 0.5, 0.0))
        return [cmap.get_waypoint(carla.Location(*map(float, p))) for p in pos]


class Sensor(Actor):
    """Event sensors (collision, lane invasion) attached to a vehicle; `listen` gets one call per event."""

    def __init__(self, world, actor_id, type_id, attributes, parent: Actor) -> None:
        super().__init__(world, actor_id, type_id, attributes)
        self.parent = parent
        self._callback = None

    def _pose(self):
        return self.parent._pose()

    @property
    def is_listening(self) -> bool:
        return self._callback is not None

    def listen(self, callback) -> None:
        self._callback = callback

    def stop(self) -> None:
        self._callback = None

    def _emit(self, event) -> None:
        if self._callback is not None:
            self._callback(event)


@dataclass
class Timestamp:
    frame: int
    elapsed_seconds: float
    delta_seconds: float
    platform_timestamp: float


class WorldSnapshot:
    def __init__(self, world: EmbeddedWorld) -> None:
        self.id = world.id
        self.frame = world.frame
        self.timestamp = Timestamp(
            world.frame, world.elapsed_seconds, world.delta_seconds, world.elapsed_seconds
        )
        self._world = world

    def find(self, actor_id: int):
        return self._world.get_actor(actor_id)

    def has_actor(self, actor_id: int) -> bool:
        return self._world.get_actor(actor_id) is not None


class ActorList:
    def __init__(self, actors: list[Actor]) -> None:
        self._actors = actors

    def filter(self, pattern: str) -> ActorList:
        return ActorList([a for a in self._actors if fnmatch.fnmatch(a.type_id, pattern)])

    def find(self, actor_id: int):
        return next((a for a in self._actors if a.id == actor_id), None)

    def __iter__(self):
        return iter(self._actors)

    def __len__(self) -> int:
        return len(self._actors)

    def __getitem__(self, i: int) -> Actor:
        return self._actors[i]


# --- sensor events, with the attribute names of carla.CollisionEvent / LaneInvasionEvent ---
@dataclass
class CollisionEvent:
    frame: int
    timestamp: float
    actor: Actor
    other_actor: Actor
    normal_impulse: carla.Vector3D
    transform: carla.Transform


@dataclass
class LaneMarking:
    type: carla.LaneMarkingType
    color: carla.LaneMarkingColor = carla.LaneMarkingColor.White
    lane_change: carla.LaneChange = carla.LaneChange.NONE
    width: float = 0.15


@dataclass
class LaneInvasionEvent:
    frame: int
    timestamp: float
    actor: Actor
    crossed_lane_markings: list[LaneMarking]
    transform: carla.Transform
