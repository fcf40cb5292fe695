"""The CARLA core with its client in a child process (simulator.carla.isolate_client, the default).

This process launches and owns the server (ports, reaper, group kill) and never builds a
carla.Client: a child process per server (a fresh interpreter, never a fork) holds the client, the
Traffic Manager, the hero's sensors and the episode's actors (client_process.py). A LibCarla abort when the server dies under an
active TM or sensors (carla#4577, #4072) ends only that child. A child that dies (EOF) or misses a
call's deadline (killed) is handled like a crashed or hung server: both are relaunched and the
episode ends truncated (SimulatorRestarted); in reset, relaunched and the reset tried once more.

Experiments keep the CARLA API through proxies: `core.hero` answers pose, velocity, acceleration,
speed limit, traffic-light state and control from the state sent with each tick, and takes
`apply_control`; `core.world` serves `get_map`, `get_actors` / `get_actor` (snapshots: id, type,
attributes, pose, motion, box), `get_snapshot`, `get_settings`, and sensors on the hero through `get_blueprint_library().find` / `spawn_actor`; `core.map` is
the town's carla.Map. Anything else raises an AttributeError naming the attribute and the opt-out.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import carla

from carla_env.carla_server.client_process import (
    ActorSnapshot,
    HeroInfo,
    HeroState,
    ServerLost,
    WorldSnapshotRecord,
    not_served,
)
from carla_env.carla_server.core import (
    CarlaCore,
    health_stats,
    new_health,
    on_driving_lane,
    record_tick,
    recycle_reason,
    start_server,
)
from carla_env.carla_server.server import CarlaServer, ServerError
from carla_env.config import SimulatorConfig
from carla_env.maps.town import load_town
from carla_env.sensors.birdview import Scene
from carla_env.simulator import SimulatorRestarted

log = logging.getLogger(__name__)


class ClientLost(Exception):
    """The client process died or missed a call's deadline (then it was killed)."""


LOST = (ClientLost, ServerLost)


class ClientProcess:
    """The child that holds one server's carla.Client; call() sends one request and waits, bounded.

    A fresh interpreter (`python -m carla_env.carla_server.client_process`, never a fork: LibCarla's
    threads don't survive one) on one end of a multiprocessing Pipe. Not a multiprocessing.Process:
    its spawn start re-runs the parent's main script in the child, which an unguarded user script or
    a notebook cannot take."""

    def __init__(
        self,
        config: SimulatorConfig,
        hero_blueprint: str,
        rendering: bool,
        client_factory,
        start_timeout: float,
    ) -> None:
        """`start_timeout`: for the child to import carla and this package and build its core (it starts
        while the server boots, so the server's ready_timeout; a loaded node imports slowly)."""
        self._conn, child_end = multiprocessing.Pipe()
        fd = child_end.fileno()
        path = os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "carla_env.carla_server.client_process", str(fd)],
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        child_end.close()
        # Its start (a fresh interpreter importing carla and this package) is not any call's time.
        try:
            self._conn.send(sys.path)  # first: the factory's module may need it to unpickle
            self._conn.send((config, hero_blueprint, rendering, client_factory))
            if not self._conn.poll(start_timeout):
                self.kill()
                raise ClientLost(
                    f"CARLA client process (pid {self.pid}) did not start within {start_timeout:g} s "
                    "(simulator.carla.ready_timeout)"
                )
            status, value = self._conn.recv()
        except (EOFError, OSError) as e:
            raise ClientLost(self._death("start")) from e
        if status == "error":
            self.kill()
            raise value

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, op: str, *args, deadline: float):
        """The child's answer to `op`; its exception re-raised here; ClientLost if it died or took
        longer than `deadline` seconds (it is killed then: a hung LibCarla call never returns)."""
        try:
            self._conn.send((op, args))
            if not self._conn.poll(deadline):
                self.kill()
                raise ClientLost(
                    f"CARLA client process (pid {self.pid}) gave no answer to {op!r} within "
                    f"{deadline:.1f} s; killed"
                )
            status, value = self._conn.recv()
        except (EOFError, OSError) as e:  # BrokenPipe, ConnectionReset: the child is gone
            raise ClientLost(self._death(op)) from e
        if status == "error":
            raise value
        return value

    def _death(self, op: str) -> str:
        try:
            code = self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            code = None
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        return f"CARLA client process (pid {self.pid}) died during {op!r} ({how})"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._conn.close()

    def close(self, deadline: float) -> None:
        """The child tidies up (sensors, actors, TM, sync off) and exits; killed if it can't."""
        try:
            if self.alive():
                self.call("close", deadline=deadline)
        except (*LOST, RuntimeError) as e:  # a dead server or child: nothing left to tidy
            log.debug("CARLA client process close: %s", e)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(2.0)
            self.kill()


class IsolatedCarlaCore:
    """A CARLA server's world through a client in a child process (satisfies SimulatorCore)."""

    backend = "carla"
    sensor_types = CarlaCore.sensor_types

    def __init__(
        self,
        config: SimulatorConfig,
        hero_blueprint: str = "vehicle.tesla.model3",
        slot: int = 0,
        rendering: bool = False,
        client_factory=None,
        log_dir: Path | None = None,
    ) -> None:
        """`client_factory`: what the child builds its client with (default carla.Client); pickled
        to the child, so a module-level callable."""
        self.config, self.server_config = config, config.carla
        self.hero_blueprint, self.slot, self.rendering = hero_blueprint, slot, rendering
        self._client_factory = client_factory
        self._log_dir = Path(log_dir or os.environ.get("CARLA_ENV_LOGS", "runs/carla_logs"))
        self._root = self.server_config.carla_root or os.environ.get("CARLA_ROOT")
        self.town = load_town(config.town, self._root)
        self.map = self.town.map  # the same OpenDRIVE the server was given
        self.server: CarlaServer | None = None
        self.client_process: ClientProcess | None = None
        self.world: ClientWorld | None = None
        self.hero: ClientHero | None = None
        self._listeners: dict[int, object] = {}  # sensor id -> its listen() callback
        self._generation = 0  # relaunches so far: sensors of an older child are gone
        self._scene: Scene | None = None  # sent with the tick once a BEV asked for one
        self._scene_wanted = False
        self._episodes_since_launch = 0
        self._leftovers: list[int] = []  # the child's episode actors and sensors, until it tidies them
        self.health = new_health()
        self._connect()

    # --------------------------------------------------------------------------- server and child
    def _connect(self) -> None:
        sc = self.server_config
        if sc.launch:
            self.server = start_server(sc, self.slot, self._root, self.rendering, self._log_dir)
            rpc, tm = self.server.ports.rpc, self.server.ports.tm
        else:
            rpc, tm = sc.port, sc.tm_port + self.slot
        attached = sc.model_copy(update={"launch": False, "port": rpc, "tm_port": tm})
        child_config = self.config.model_copy(update={"carla": attached})
        self.client_process = None
        try:
            self.client_process = ClientProcess(
                child_config, self.hero_blueprint, self.rendering, self._client_factory, sc.ready_timeout
            )
            if self.server is not None:
                self.server.wait_ready(sc.ready_timeout, self._probe)
        except BaseException as e:
            if self.client_process is not None:
                self.client_process.kill()
            if self.server is not None:
                self.server.stop()
            self.client_process = self.server = None
            if isinstance(e, ClientLost):
                raise ServerError(f"CARLA slot {self.slot}: {e}") from e
            raise
        self._episodes_since_launch = 0

    def _probe(self, host: str, port: int, timeout: float) -> None:
        """The readiness probe, run by the child's client (this process builds none)."""
        try:
            self.client_process.call(
                "probe", timeout, deadline=timeout + self.server_config.client_process_grace
            )
        except ClientLost as e:  # final: wait_ready would otherwise retry a dead child until its deadline
            raise ServerError(f"CARLA slot {self.slot}: {e} while waiting for the server") from e

    def _deadline(self, op: str) -> float:
        """A call's own LibCarla time-outs, plus the grace; past it the child is taken for hung."""
        sc = self.server_config
        bound = {
            "tick": 2 * sc.tick_timeout,  # the tick, then a stream sensor's data of its frame
            # map load, the spawn and destroy batches, the walkers' tick, the episode's first tick
            "reset": sc.map_load_timeout + 2 * sc.tick_timeout + 8 * sc.client_timeout,
            "close": 8 * sc.client_timeout,  # sensors, the destroy batch, TM and world settings
        }.get(op, 3 * sc.client_timeout)
        return bound + sc.client_process_grace

    def _call(self, op: str, *args):
        return self.client_process.call(op, *args, deadline=self._deadline(op))

    def _relaunch(self, reason: str) -> None:
        """Kill the child (its TM registry and sensors go with it) and the server's group; start both."""
        log.warning("CARLA slot %d: %s; relaunching server and client process", self.slot, reason)
        self.health["restarts"] += 1
        self._generation += 1
        self._drop_episode()
        if self.client_process is not None:
            self.client_process.kill()
        if self.server is not None:
            self.server.stop()
        self.server = None
        self._connect()
        if (
            self.server is None and self._leftovers
        ):  # attached: the server and the dead child's actors live on
            leftovers, self._leftovers = self._leftovers, []
            try:
                self._call("destroy_leftovers", leftovers)
            except (*LOST, RuntimeError) as e:  # a child that dies here is found dead at the next call
                log.warning(
                    "CARLA slot %d: %d actors of the killed client process left: %s",
                    self.slot,
                    len(leftovers),
                    e,
                )

    def _drop_episode(self) -> None:
        if self.hero is not None:
            self.hero.is_alive = False
        self.world = self.hero = None
        self._listeners, self._scene = {}, None

    def restart(self, reason: str) -> NoReturn:
        """Replace a crashed or hung server and its client process; raises SimulatorRestarted (the
        running episode is over); a relaunch that fails is a ServerError."""
        self._relaunch(reason)
        raise SimulatorRestarted(reason)

    # ----------------------------------------------------------------------------------- episodes
    def reset(self, seed: int | None = None, hero_transform: carla.Transform | None = None) -> None:
        """A new episode; a dead or hung server or child on the way is relaunched and the reset tried once more."""
        pending = recycle_reason(self.server, self.server_config, self._episodes_since_launch)
        if pending is None and self.server is not None and not self.server.alive():
            pending = f"CARLA server (pid {self.server.pid}) died between episodes"
        if pending is None and self.client_process is None:  # a relaunch that failed before
            pending = "no CARLA client process (its last launch failed)"
        if pending is None and not self.client_process.alive():
            pending = f"CARLA client process (pid {self.client_process.pid}) died between episodes"
        self._drop_episode()
        failure = ""
        for _ in range(2):
            try:
                if pending is not None:
                    self._relaunch(pending)
                    pending = None
                info: HeroInfo = self._call("reset", seed, hero_transform)
                self._leftovers = list(info.actor_ids)
                self.world = ClientWorld(self)
                self.hero = ClientHero(self, info)
                self._episodes_since_launch += 1
                return
            except ServerError:  # a launch that failed, no free spawn point: another try won't help
                raise
            except (*LOST, RuntimeError) as e:
                failure = str(e)
                pending = f"reset failed ({failure})"
        where = f"; log: {self.server.log_path}" if self.server is not None else ""
        raise ServerError(
            f"CARLA slot {self.slot}: reset failed again on a relaunched server: {failure}{where}"
        )

    def tick(self, control: carla.VehicleControl | None) -> int:
        if self.server is not None and not self.server.alive():
            self.restart(f"CARLA server (pid {self.server.pid}) died; log: {self.server.log_path}")
        control = control if control is not None else self.hero.take_control()
        t0 = time.perf_counter()
        try:
            frame, state, data, scene = self._call("tick", control, self._scene_wanted)
        except LOST as e:
            self.restart(str(e))
        dt = time.perf_counter() - t0
        self.hero.state, self._scene = state, scene
        for sensor_id, records in data.items():
            listener = self._listeners.get(sensor_id)
            for record in records if listener is not None else ():
                listener(record)
        record_tick(self.health, dt)
        return frame

    def on_driving_lane(self, actor) -> bool:
        return on_driving_lane(self.map, actor)

    def birdview_scene(self, hero) -> Scene:
        """The hero's scene, built in the child; from the next tick on it comes with the tick's reply."""
        self._scene_wanted = True
        if self._scene is None:
            try:
                self._scene = self._call("birdview_scene")
            except LOST as e:
                self.restart(str(e))
        return self._scene

    def stats(self) -> dict[str, float]:
        return health_stats(self.health)

    def client_info(self) -> dict:
        """The child's pid, client class and client version (for the smoke test and diagnostics)."""
        return self._call("info")

    def close(self) -> None:
        """The child destroys the actors, shuts its TM down and turns sync off; then the server's group is killed."""
        try:
            if self.client_process is not None:
                self.client_process.close(self._deadline("close"))
        finally:
            if self.server is not None:
                self.server.stop()
            self.server = self.client_process = None
            self._drop_episode()


# ------------------------------------------------------------------------------------- proxies
class ClientHero:
    """The hero as the child saw it at the last tick; controls go with the next tick."""

    def __init__(self, core: IsolatedCarlaCore, info: HeroInfo) -> None:
        self._core = core
        self.id, self.type_id, self.bounding_box = info.id, info.type_id, info.bounding_box
        self.attributes = info.attributes  # the blueprint's, role_name included, as carla.Actor.attributes
        self.state: HeroState = info.state
        self.is_alive = True
        self._control: carla.VehicleControl | None = None

    def get_transform(self) -> carla.Transform:
        t = self.state.transform
        return carla.Transform(t.location, t.rotation)  # a copy, as LibCarla returns

    def get_location(self) -> carla.Location:
        loc = self.state.transform.location
        return carla.Location(loc.x, loc.y, loc.z)

    def get_velocity(self) -> carla.Vector3D:
        v = self.state.velocity
        return carla.Vector3D(v.x, v.y, v.z)

    def get_acceleration(self) -> carla.Vector3D:
        a = self.state.acceleration
        return carla.Vector3D(a.x, a.y, a.z)

    def get_angular_velocity(self) -> carla.Vector3D:
        w = self.state.angular_velocity
        return carla.Vector3D(w.x, w.y, w.z)

    def get_speed_limit(self) -> float:
        return self.state.speed_limit

    def is_at_traffic_light(self) -> bool:
        return self.state.at_traffic_light

    def get_traffic_light_state(self) -> carla.TrafficLightState:
        return self.state.traffic_light_state

    def get_control(self) -> carla.VehicleControl:
        return self._control if self._control is not None else self.state.control

    def apply_control(self, control: carla.VehicleControl) -> None:
        self._control = control

    def take_control(self) -> carla.VehicleControl | None:
        control, self._control = self._control, None
        return control

    def get_world(self) -> ClientWorld:
        return self._core.world

    def __getattr__(self, name: str):
        raise not_served("carla.Vehicle (core.hero)", name)


class ActorSnapshots(list):
    """world.get_actors(): a list with carla.ActorList's filter (fnmatch on the type id)."""

    def filter(self, pattern: str) -> ActorSnapshots:
        return ActorSnapshots(a for a in self if fnmatch.fnmatchcase(a.type_id, pattern))

    def find(self, actor_id: int) -> ActorSnapshot | None:
        return next((a for a in self if a.id == actor_id), None)


class SensorBlueprint:
    def __init__(self, blueprint_id: str) -> None:
        self.id = blueprint_id
        self.attributes: dict[str, str] = {}

    def set_attribute(self, key: str, value) -> None:
        self.attributes[key] = str(value)


class SensorBlueprints:
    """world.get_blueprint_library(): sensor blueprints, mounted on the hero in the child."""

    def find(self, blueprint_id: str) -> SensorBlueprint:
        if not blueprint_id.startswith("sensor."):
            raise not_served("carla.BlueprintLibrary", f"find({blueprint_id!r}) (only sensor.* blueprints)")
        return SensorBlueprint(blueprint_id)


class ClientSensor:
    """A sensor in the child; listen() gets its measurements as records with each tick."""

    def __init__(self, core: IsolatedCarlaCore, sensor_id: int, type_id: str) -> None:
        self._core, self.id, self.type_id = core, sensor_id, type_id
        self._generation = core._generation  # noqa: SLF001 - the core's own proxy

    @property
    def is_alive(self) -> bool:
        return self._generation == self._core._generation and self._core.client_process is not None  # noqa: SLF001

    def listen(self, callback) -> None:
        self._core._listeners[self.id] = callback  # noqa: SLF001

    def stop(self) -> None:
        self._core._listeners.pop(self.id, None)  # noqa: SLF001

    def destroy(self) -> None:
        if self.is_alive:
            try:
                self._core._call("destroy_sensor", self.id)  # noqa: SLF001
            except LOST:  # the child is gone, and its sensors with it
                pass
        self._generation = -1

    def __getattr__(self, name: str):
        raise not_served("carla.Sensor", name)


class ClientWorld:
    """core.world when the client runs in a child process: map, actor snapshots, sensors on the hero."""

    def __init__(self, core: IsolatedCarlaCore) -> None:
        self._core = core

    def get_map(self) -> carla.Map:
        return self._core.map

    def _ask(self, op: str, *args):
        """The child's answer; a lost child ends the episode as a lost server does."""
        try:
            return self._core._call(op, *args)  # noqa: SLF001
        except LOST as e:
            self._core.restart(str(e))

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorSnapshots:
        return ActorSnapshots(self._ask("actors", None if actor_ids is None else [int(i) for i in actor_ids]))

    def get_actor(self, actor_id: int) -> ActorSnapshot | None:
        return self.get_actors([actor_id]).find(int(actor_id))

    def get_snapshot(self) -> WorldSnapshotRecord:
        """The last tick's frame, timestamp and every actor's pose and motion (one call to the child)."""
        return self._ask("snapshot")

    def get_settings(self) -> carla.WorldSettings:
        return self._ask("settings")

    def get_blueprint_library(self) -> SensorBlueprints:
        return SensorBlueprints()

    def spawn_actor(self, blueprint, transform: carla.Transform, attach_to=None) -> ClientSensor:
        hero = self._core.hero
        if not isinstance(blueprint, SensorBlueprint) or attach_to is None or attach_to is not hero:
            raise not_served("carla.World", "spawn_actor (only sensors attached to core.hero)")
        sensor_id = self._ask("spawn_sensor", blueprint.id, blueprint.attributes, transform)
        self._core._leftovers.insert(0, sensor_id)  # noqa: SLF001 - sensors go before the hero
        return ClientSensor(self._core, sensor_id, blueprint.id)

    def __getattr__(self, name: str):
        raise not_served("carla.World (core.world)", name)


def make_carla_core(
    config: SimulatorConfig, hero_blueprint: str, slot: int = 0, rendering: bool = False
) -> CarlaCore | IsolatedCarlaCore:
    """The CARLA core the config asks for: the client in a child process (default) or in this one."""
    cls = IsolatedCarlaCore if config.carla.isolate_client else CarlaCore
    return cls(config, hero_blueprint, slot=slot, rendering=rendering)
