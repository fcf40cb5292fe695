"""A carla.Client for the CARLA client process in tests: autospec'd from the real carla 0.9.16 wheel
(a misspelt or missing API call fails), talking to the fake server (tests/fake_carla/CarlaUE4.sh)
where LibCarla would make an RPC: the version probe and every world.tick connect to its RPC port,
so a dead fake server fails them like LibCarla's time-out.

`make_client` is module-level so it pickles to a spawn-context child. Misbehaviour on request,
through the environment the child inherits: FAKE_CARLA_CLIENT_HANG_AT=N blocks the N-th tick for an
hour (a LibCarla call that ignores its time-out); FAKE_CARLA_CLIENT_TIME_OUT_AT=N,M with
FAKE_CARLA_CLIENT_ONCE=PATH makes the ticks of frames N and M raise LibCarla's time-out, each once
over all children (PATH.N marks it done); FAKE_CARLA_CLIENT_PIDS=FILE records the child's pid; FAKE_CARLA_CLIENT_DESTROYED=FILE each destroy
batch ("pid id id ..."); FAKE_CARLA_CLIENT_CAMERA_STOPS_AT=N: cameras send no image from frame N on.
Every 3rd frame a collision event reaches the hero's collision sensors; an RGB camera gets its frame's
image 50 ms after the tick returns (image_size_x/y attributes, default 8 x 4; every byte the frame number).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from types import SimpleNamespace
from unittest.mock import create_autospec

import carla

CLIENT_VERSION = "0.9.16"


class SpawnActor(SimpleNamespace):
    """carla.command.SpawnActor needs a server-made ActorBlueprint; this records what was asked."""

    def __init__(self, blueprint, transform, parent=None):
        assert isinstance(transform, carla.Transform)
        super().__init__(blueprint=blueprint, transform=transform, parent=parent)


class ActorList(list):
    def filter(self, pattern: str):
        import fnmatch

        return ActorList(a for a in self if fnmatch.fnmatchcase(a.type_id, pattern))


class WorldSnapshot(list):
    """carla.WorldSnapshot of the last tick: its actors (the hero), frame and timestamp."""

    def __init__(self, frame: int, actors) -> None:
        super().__init__(actors)
        self.id, self.frame = 9, frame
        self.timestamp = carla.Timestamp(frame, frame * 0.05, 0.05, 1000.0 + frame)


def _server_answers(host: str, port: int, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        raise RuntimeError(
            f"time-out of {timeout * 1e3:.0f}ms while waiting for the simulator, make sure the "
            f"simulator is ready and connected to {host}:{port}"
        ) from None


def make_client(host: str, port: int):
    carla.command.SpawnActor = SpawnActor  # in this (child) process only
    record = os.environ.get("FAKE_CARLA_CLIENT_PIDS")
    if record:
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")
    hang_at = int(os.environ.get("FAKE_CARLA_CLIENT_HANG_AT", "0"))
    time_out_at = {int(f) for f in os.environ.get("FAKE_CARLA_CLIENT_TIME_OUT_AT", "").split(",") if f}
    once = os.environ.get("FAKE_CARLA_CLIENT_ONCE", os.devnull)
    camera_stops_at = int(os.environ.get("FAKE_CARLA_CLIENT_CAMERA_STOPS_AT", "0")) or 2**62
    timeout = [10.0]
    client = create_autospec(carla.Client, instance=True)
    client.set_timeout.side_effect = lambda seconds: timeout.__setitem__(0, seconds)
    client.get_client_version.return_value = CLIENT_VERSION

    def server_version():
        _server_answers(host, port, timeout[0])
        return CLIENT_VERSION

    client.get_server_version.side_effect = server_version

    world = create_autospec(carla.World, instance=True)
    tm = create_autospec(carla.TrafficManager, instance=True)
    library = create_autospec(carla.BlueprintLibrary, instance=True)

    def blueprint(blueprint_id="vehicle.tesla.model3"):
        bp = create_autospec(carla.ActorBlueprint, instance=True)
        bp.id, bp.values = blueprint_id, {}
        bp.set_attribute.side_effect = bp.values.__setitem__
        bp.get_attribute.return_value.as_int.return_value = 4
        return bp

    library.find.side_effect = blueprint
    library.filter.return_value = [blueprint()]
    hero = create_autospec(carla.Vehicle, instance=True)
    hero.id, hero.type_id = 1, "vehicle.tesla.model3"
    hero.attributes = {"role_name": "hero", "number_of_wheels": "4"}
    hero.bounding_box = carla.BoundingBox(carla.Location(), carla.Vector3D(2.4, 1.0, 0.8))
    hero.get_velocity.return_value = carla.Vector3D(3.0, 4.0, 0.0)
    hero.get_acceleration.return_value = carla.Vector3D(0.5, 0.0, 0.0)
    hero.get_angular_velocity.return_value = carla.Vector3D(0.0, 0.0, 2.0)
    hero.get_speed_limit.return_value = 30.0
    hero.is_at_traffic_light.return_value = False
    hero.get_traffic_light_state.return_value = carla.TrafficLightState.Green
    hero.get_control.return_value = carla.VehicleControl()

    def spawn_hero(bp, transform):  # the hero stands where it was spawned
        hero.get_transform.return_value = transform
        hero.get_location.return_value = transform.location
        return hero

    world.try_spawn_actor.side_effect = spawn_hero
    hero.get_transform.return_value = carla.Transform()
    sensors = []
    sensor_ids = itertools.count(500)

    def spawn_sensor(bp, transform, attach_to=None):
        sensor = create_autospec(carla.Sensor, instance=True)
        sensor.id, sensor.type_id, sensor.is_alive = next(sensor_ids), bp.id, True
        sensor.size = int(bp.values.get("image_size_x", 8)), int(bp.values.get("image_size_y", 4))
        sensor.listen.side_effect = lambda callback: sensors.append((sensor, callback))
        sensor.destroy.side_effect = lambda: setattr(sensor, "is_alive", False)
        return sensor

    world.spawn_actor.side_effect = spawn_sensor
    world.get_actors.side_effect = lambda ids=None: ActorList([hero])
    frames = itertools.count(1)
    last_frame = [0]
    world.get_snapshot.side_effect = lambda: WorldSnapshot(last_frame[0], [hero])

    def tick(seconds=10.0):
        frame = last_frame[0] = next(frames)
        if frame == hang_at:
            time.sleep(3600)
        if frame in time_out_at and not os.path.exists(f"{once}.{frame}"):  # once per frame number
            open(f"{once}.{frame}", "w").close()
            raise RuntimeError(f"time-out of {seconds * 1e3:.0f}ms while waiting for the simulator")
        _server_answers(host, port, seconds)
        for sensor, callback in sensors:
            camera = sensor.is_alive and sensor.type_id == "sensor.camera.rgb"
            if camera and frame < camera_stops_at:  # after tick returns, as LibCarla
                width, height = sensor.size
                image = SimpleNamespace(
                    frame=frame,
                    width=width,
                    height=height,
                    fov=90.0,
                    raw_data=bytes([frame % 256]) * (4 * width * height),
                )
                threading.Timer(0.05, callback, (image,)).start()
            if sensor.is_alive and sensor.type_id == "sensor.other.collision" and frame % 3 == 0:
                callback(
                    SimpleNamespace(
                        frame=frame,
                        timestamp=frame * 0.05,
                        transform=carla.Transform(),
                        other_actor=SimpleNamespace(id=7, type_id="static.wall"),
                        normal_impulse=carla.Vector3D(120.0, 0.0, 0.0),
                    )
                )
        return frame

    world.tick.side_effect = tick
    world.get_settings.return_value = carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05)
    world.get_blueprint_library.return_value = library
    world.get_random_location_from_navigation.return_value = None
    for method in ("get_world", "load_world", "generate_opendrive_world"):
        getattr(client, method).return_value = world
    client.get_trafficmanager.return_value = tm
    ids = itertools.count(100)
    destroyed = os.environ.get("FAKE_CARLA_CLIENT_DESTROYED")

    def apply_batch_sync(commands, sync):
        gone = [c.actor_id for c in commands if isinstance(c, carla.command.DestroyActor)]
        if destroyed and gone:
            with open(destroyed, "a") as f:
                f.write(f"{os.getpid()} {' '.join(map(str, gone))}\n")
        return [SimpleNamespace(actor_id=next(ids), error="") for _ in commands]

    client.apply_batch_sync.side_effect = apply_batch_sync
    return client
