"""The CARLA client's own process: one per server, holding the carla.Client, the Traffic Manager, the
hero's sensors and the episode's actors (a CarlaCore attached to the server its parent launched).

LibCarla can abort the process that holds a client when the server dies while a Traffic Manager or
sensors are active (carla#4577, #4072): that now ends this child only. The parent
(`isolated.IsolatedCarlaCore`) sees the pipe close or a reply miss its deadline, relaunches server and
child, and truncates the episode. The child's TM registry dies with it, so no stale TM is left behind.

Protocol: the parent sends `(op, args)` over a multiprocessing Connection and gets one reply,
`("ok", value)` or `("error", exception)`; ops are the public methods of ClientSession. carla's value
types (Location, Transform, VehicleControl, ...) do not pickle: reducers for them are registered on
import of this module, which both sides import.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from types import SimpleNamespace

import carla

from carla_env.carla_server.core import CarlaCore
from carla_env.carla_server.server import check_versions
from carla_env.simulator import STREAM_SENSORS


def not_served(what: str, name: str) -> AttributeError:
    """What the parent's proxies and records say of an attribute they don't carry."""
    return AttributeError(
        f"{what}.{name} is not served here: the CARLA client runs in a child process "
        f"(simulator.carla.isolate_client), which serves the hero's pose, motion, speed limit, light "
        f"state, control and attributes, world.get_map/get_actors/get_actor/get_snapshot/get_settings "
        f"(copies read at the call) and sensors on the hero (their "
        f"measurements' fields). Read it through a sensor, or set simulator.carla.isolate_client: "
        "false to keep the client in this process (a server crash can then abort it)"
    )


class ServerLost(Exception):
    """The child's LibCarla lost its server (a time-out or a dropped connection): relaunch both.
    Not a RuntimeError, so CarlaCore's own retry logic lets it through to the parent."""


# ------------------------------------------------------------------------------ carla value types
def _vector(v):
    return type(v), (v.x, v.y, v.z)


def _bounding_box(location, extent, rotation):
    box = carla.BoundingBox(location, extent)  # the wheel's 3-argument constructor refuses a Rotation
    box.rotation = rotation
    return box


def _control(c):
    return _vehicle_control, (
        c.throttle,
        c.steer,
        c.brake,
        c.hand_brake,
        c.reverse,
        c.manual_gear_shift,
        c.gear,
    )


def _vehicle_control(throttle, steer, brake, hand_brake, reverse, manual_gear_shift, gear):
    return carla.VehicleControl(throttle, steer, brake, hand_brake, reverse, manual_gear_shift, gear)


for _cls in (carla.Location, carla.Vector3D):
    ForkingPickler.register(_cls, _vector)
ForkingPickler.register(carla.Rotation, lambda r: (carla.Rotation, (r.pitch, r.yaw, r.roll)))
ForkingPickler.register(carla.Transform, lambda t: (carla.Transform, (t.location, t.rotation)))
ForkingPickler.register(carla.BoundingBox, lambda b: (_bounding_box, (b.location, b.extent, b.rotation)))
ForkingPickler.register(carla.VehicleControl, _control)
ForkingPickler.register(
    carla.Timestamp,
    lambda t: (carla.Timestamp, (t.frame, t.elapsed_seconds, t.delta_seconds, t.platform_timestamp)),
)

WORLD_SETTINGS_FIELDS = (
    "synchronous_mode",
    "no_rendering_mode",
    "fixed_delta_seconds",
    "substepping",
    "max_substep_delta_time",
    "max_substeps",
    "max_culling_distance",
    "deterministic_ragdolls",
    "tile_stream_distance",
    "actor_active_distance",
    "spectator_as_ego",
)


def _world_settings(fields: dict) -> carla.WorldSettings:
    settings = carla.WorldSettings()  # fixed_delta_seconds may be None: set, not passed to the constructor
    for name, value in fields.items():
        setattr(settings, name, value)
    return settings


ForkingPickler.register(
    carla.WorldSettings, lambda s: (_world_settings, ({n: getattr(s, n) for n in WORLD_SETTINGS_FIELDS},))
)


# ---------------------------------------------------------------------------- what crosses the pipe
@dataclass
class ActorSnapshot:
    """An actor as the client process read it at one frame: id, type, attributes, pose, motion, box
    (what LibCarla reads from the frame's snapshot or the actor's description, without an RPC).
    An event's other actor carries its id and type only."""

    id: int
    type_id: str
    transform: carla.Transform | None = None
    velocity: carla.Vector3D | None = None
    bounding_box: carla.BoundingBox | None = None
    is_alive: bool = True
    acceleration: carla.Vector3D | None = None
    angular_velocity: carla.Vector3D | None = None
    attributes: dict | None = None

    def _read(self, field: str, getter: str):
        value = self.__dict__[field]
        if value is None:
            raise not_served(f"carla.Actor snapshot ({self.type_id}, an event's other actor)", getter)
        return value

    def get_transform(self) -> carla.Transform:
        return self._read("transform", "get_transform")

    def get_location(self) -> carla.Location:
        return self._read("transform", "get_location").location

    def get_velocity(self) -> carla.Vector3D:
        return self._read("velocity", "get_velocity")

    def get_acceleration(self) -> carla.Vector3D:
        return self._read("acceleration", "get_acceleration")

    def get_angular_velocity(self) -> carla.Vector3D:
        return self._read("angular_velocity", "get_angular_velocity")

    def __getattr__(self, name: str):
        raise not_served(f"carla.Actor snapshot ({self.__dict__.get('type_id')})", name)


def actor_snapshot(actor) -> ActorSnapshot:
    return ActorSnapshot(
        int(actor.id),
        str(actor.type_id),
        actor.get_transform(),
        actor.get_velocity(),
        actor.bounding_box,
        acceleration=actor.get_acceleration(),
        angular_velocity=actor.get_angular_velocity(),
        attributes=dict(actor.attributes),
    )


@dataclass
class FrameActor:
    """carla.ActorSnapshot: one actor in a world snapshot (id, pose, motion)."""

    id: int
    transform: carla.Transform
    velocity: carla.Vector3D
    angular_velocity: carla.Vector3D
    acceleration: carla.Vector3D

    def get_transform(self) -> carla.Transform:
        return self.transform

    def get_velocity(self) -> carla.Vector3D:
        return self.velocity

    def get_angular_velocity(self) -> carla.Vector3D:
        return self.angular_velocity

    def get_acceleration(self) -> carla.Vector3D:
        return self.acceleration


@dataclass
class WorldSnapshotRecord:
    """carla.WorldSnapshot as the client process read it: frame, timestamp, every actor's pose and motion."""

    id: int
    frame: int
    timestamp: carla.Timestamp
    actors: dict[int, FrameActor]

    @property
    def elapsed_seconds(self) -> float:
        return self.timestamp.elapsed_seconds

    @property
    def delta_seconds(self) -> float:
        return self.timestamp.delta_seconds

    @property
    def platform_timestamp(self) -> float:
        return self.timestamp.platform_timestamp

    def find(self, actor_id: int) -> FrameActor | None:
        return self.actors.get(int(actor_id))

    def has_actor(self, actor_id: int) -> bool:
        return int(actor_id) in self.actors

    def __iter__(self):
        return iter(self.actors.values())

    def __len__(self) -> int:
        return len(self.actors)


def world_snapshot_record(snapshot) -> WorldSnapshotRecord:
    actors = {
        int(a.id): FrameActor(
            int(a.id), a.get_transform(), a.get_velocity(), a.get_angular_velocity(), a.get_acceleration()
        )
        for a in snapshot
    }
    return WorldSnapshotRecord(int(snapshot.id), int(snapshot.frame), snapshot.timestamp, actors)


@dataclass
class HeroState:
    """What the hero's proxy answers from until the next tick (LibCarla reads these from the frame's
    snapshot too, without an RPC)."""

    transform: carla.Transform
    velocity: carla.Vector3D
    acceleration: carla.Vector3D
    angular_velocity: carla.Vector3D
    speed_limit: float
    at_traffic_light: bool
    traffic_light_state: carla.TrafficLightState
    control: carla.VehicleControl


def hero_state(hero) -> HeroState:
    return HeroState(
        hero.get_transform(),
        hero.get_velocity(),
        hero.get_acceleration(),
        hero.get_angular_velocity(),
        float(hero.get_speed_limit()),
        bool(hero.is_at_traffic_light()),
        hero.get_traffic_light_state(),
        hero.get_control(),
    )


@dataclass
class HeroInfo:
    id: int
    type_id: str
    bounding_box: carla.BoundingBox
    state: HeroState
    attributes: dict
    actor_ids: list[int]  # the episode's: walker controllers, walkers, traffic, hero


# The measurement attributes copied into a record (those a measurement has): events, camera, lidar,
# radar, GNSS, IMU. raw_data becomes bytes, actors ActorSnapshots (id and type), lane markings plain.
MEASUREMENT_FIELDS = (
    "frame",
    "timestamp",
    "transform",
    "other_actor",
    "normal_impulse",
    "distance",
    "crossed_lane_markings",
    "width",
    "height",
    "fov",
    "raw_data",
    "channels",
    "horizontal_angle",
    "latitude",
    "longitude",
    "altitude",
    "accelerometer",
    "gyroscope",
    "compass",
)


class SensorRecord(SimpleNamespace):
    """A measurement's fields (MEASUREMENT_FIELDS it has), as the parent's sensor callbacks get them."""

    def __getattr__(self, name: str):
        raise not_served("sensor measurement record", name)


def measurement_record(measurement) -> SensorRecord:
    """A picklable copy of a sensor measurement or event (carla.SensorData does not pickle)."""
    out = {}
    for name in MEASUREMENT_FIELDS:
        try:
            value = getattr(measurement, name)
        except (AttributeError, RuntimeError):  # not this kind's, or an actor already gone
            continue
        if name == "raw_data":
            value = bytes(value)
        elif name == "other_actor" and value is not None:  # None: nothing LibCarla could name
            value = ActorSnapshot(int(value.id), str(value.type_id))
        elif name == "crossed_lane_markings":
            value = [
                SimpleNamespace(type=m.type, color=m.color, lane_change=m.lane_change, width=m.width)
                for m in value
            ]
        out[name] = value
    return SensorRecord(**out)


class SensorBuffer:
    """A sensor on the hero; its measurements, as records, wait here for the parent's next tick."""

    def __init__(self, actor, stream: bool) -> None:
        self.actor = actor
        self.stream = stream  # data every frame: a tick waits (bounded) for its frame's
        self._records: list = []
        self._arrived = threading.Condition()
        self.actor.listen(self._on_data)

    def _on_data(self, measurement) -> None:  # on LibCarla's threads
        record = measurement_record(measurement)
        with self._arrived:
            self._records.append(record)
            self._arrived.notify_all()

    def wait_for(self, frame: int, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: any(r.frame >= frame for r in self._records), timeout)

    def drain(self) -> list:
        with self._arrived:
            out, self._records = self._records, []
        return out

    def destroy(self) -> None:
        if self.actor.is_alive:
            self.actor.stop()
            self.actor.destroy()


# ------------------------------------------------------------------------------------ the child
class ChildCore(CarlaCore):
    """CarlaCore attached to the parent's server; a lost server is the parent's to replace."""

    def restart(self, reason: str):
        raise ServerLost(reason)

    def _relaunch(self, reason: str) -> None:
        raise ServerLost(reason)


class ClientSession:
    """The ops the parent may call; each runs in the child and returns something picklable."""

    def __init__(self, core: ChildCore) -> None:
        self.core = core
        self.sensors: dict[int, SensorBuffer] = {}

    def probe(self, timeout: float) -> None:
        client = self.core.client
        client.set_timeout(timeout)
        try:
            check_versions(client, self.core.server_config.port)
        finally:
            client.set_timeout(self.core.server_config.client_timeout)

    def info(self) -> dict:
        client = self.core.client
        return {
            "pid": os.getpid(),
            "client_type": f"{type(client).__module__}.{type(client).__qualname__}",
            "client_version": client.get_client_version(),  # the probe checked the server's against it
        }

    def reset(self, seed: int | None, hero_transform: carla.Transform | None) -> HeroInfo:
        self._destroy_sensors()
        self.core.reset(seed=seed, hero_transform=hero_transform)
        hero = self.core.hero
        core = self.core
        actors = [i for pair in core._walkers for i in pair[::-1]] + [*core._npcs, hero.id]  # noqa: SLF001
        return HeroInfo(
            int(hero.id),
            str(hero.type_id),
            hero.bounding_box,
            hero_state(hero),
            dict(hero.attributes),
            [int(i) for i in actors],
        )

    def destroy_leftovers(self, actor_ids: list[int]) -> None:
        """Actors a killed client process left on an attached server (the server lives on): its
        traffic would drive on with the last control its dead TM gave, its hero and sensors stay."""
        world = self.core.client.get_world()
        for controller in world.get_actors(actor_ids).filter("controller.ai.walker"):
            controller.stop()
        self.core.client.apply_batch_sync([carla.command.DestroyActor(i) for i in actor_ids], True)

    def tick(self, control: carla.VehicleControl | None, with_scene: bool):
        frame = self.core.tick(control)
        # Every stream sensor's data of this frame, all within one tick_timeout (the parent's deadline
        # allows one); a frame that never comes is a broken stream: server and child are relaunched.
        timeout = self.core.server_config.tick_timeout
        until = time.monotonic() + timeout
        for sensor in self.sensors.values():
            if sensor.stream and not sensor.wait_for(frame, max(until - time.monotonic(), 0.0)):
                raise ServerLost(
                    f"sensor {sensor.actor.type_id}: no data for frame {frame} within {timeout:g} s"
                )
        scene = self.core.birdview_scene(self.core.hero) if with_scene else None
        data = {sensor_id: sensor.drain() for sensor_id, sensor in self.sensors.items()}
        return frame, hero_state(self.core.hero), data, scene

    def spawn_sensor(self, blueprint_id: str, attributes: dict, transform: carla.Transform) -> int:
        world = self.core.world
        blueprint = world.get_blueprint_library().find(blueprint_id)
        for key, value in attributes.items():
            blueprint.set_attribute(key, value)
        actor = world.spawn_actor(blueprint, transform, attach_to=self.core.hero)
        self.sensors[int(actor.id)] = SensorBuffer(actor, blueprint_id in STREAM_SENSORS)
        return int(actor.id)

    def destroy_sensor(self, sensor_id: int) -> None:
        sensor = self.sensors.pop(sensor_id, None)
        if sensor is not None:
            sensor.destroy()

    def actors(self, actor_ids: list[int] | None) -> list[ActorSnapshot]:
        world = self.core.world
        found = world.get_actors(actor_ids) if actor_ids is not None else world.get_actors()
        return [actor_snapshot(a) for a in found]

    def birdview_scene(self):
        return self.core.birdview_scene(self.core.hero)

    def snapshot(self) -> WorldSnapshotRecord:
        return world_snapshot_record(self.core.world.get_snapshot())

    def settings(self) -> carla.WorldSettings:
        return self.core.world.get_settings()

    def close(self) -> None:
        try:
            self._destroy_sensors()
        finally:
            self.core.close()

    def _destroy_sensors(self) -> None:
        for sensor_id in list(self.sensors):
            self.destroy_sensor(sensor_id)


def _reply(conn, status: str, value) -> None:
    try:
        payload = ForkingPickler.dumps((status, value))
        if status == "error":  # an exception whose __init__ takes other arguments pickles, then fails to load
            pickle.loads(payload)
    except Exception as e:  # noqa: BLE001 - an exception or value that does not pickle
        payload = ForkingPickler.dumps(
            ("error", RuntimeError(f"{type(value).__name__}: {value} (reply not picklable: {e})"))
        )
    conn.send_bytes(payload)  # what Connection.send would write


def serve(conn, config, hero_blueprint: str, rendering: bool, client_factory=None) -> None:
    """The child's loop: build the core (its client connects lazily), say ready (or send the error),
    then answer requests until `close` or until the parent is gone (EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    try:
        core = ChildCore(
            config, hero_blueprint, rendering=rendering, client_factory=client_factory or carla.Client
        )
    except Exception as e:  # noqa: BLE001 - the parent raises it
        _reply(conn, "error", e)
        conn.close()
        return
    session = ClientSession(core)
    _reply(conn, "ready", os.getpid())
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            _reply(conn, "ok", getattr(session, op)(*args))
        except Exception as e:  # noqa: BLE001 - the parent raises it
            _reply(conn, "error", e)
        if op == "close":
            break
    conn.close()


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """Leave once the parent is gone (this process re-parented). The pipe's EOF says so too, but only
    to a loop that reads it: a LibCarla call that hangs never returns to it."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def main(fd: int) -> None:
    """`python -m carla_env.carla_server.client_process FD`: FD is this child's end of the parent's Pipe;
    the first messages are the parent's sys.path, then serve()'s arguments."""
    import sys
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sys.path[:] = conn.recv()  # the parent's: where it found the client factory's module
    serve(conn, *conn.recv())


if __name__ == "__main__":
    import sys

    # The module under its own name, not __main__, so what it pickles unpickles in the parent.
    from carla_env.carla_server.client_process import main as module_main

    module_main(int(sys.argv[1]))
