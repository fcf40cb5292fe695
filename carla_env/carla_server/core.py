"""The CARLA backend's core: a server (launched and owned, or attached), a synchronous world with a
seeded Traffic Manager, the hero and background traffic; recovery from a dead or hung server.

A crash or a tick past `tick_timeout` kills the server's group, relaunches it, rebuilds client,
world and Traffic Manager, and raises SimulatorRestarted: the env ends that episode as truncated.
A dead or hung server during reset (map load, spawn batches, the walkers' tick) is relaunched and the
reset retried once; a second failure is a ServerError.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import os
import time
from pathlib import Path
from typing import NoReturn

import carla
import numpy as np

from carla_env.carla_server.ports import lease_ports
from carla_env.carla_server.server import CarlaServer, ServerError, carla_probe, server_command
from carla_env.config import CarlaServerConfig, SimulatorConfig
from carla_env.maps.town import load_town, resolve_town
from carla_env.sensors.birdview import Scene
from carla_env.sensors.scene import scene_from_world
from carla_env.simulator import BIRDVIEW, EVENT_SENSORS, OBSTACLE_SENSOR, STREAM_SENSORS, SimulatorRestarted

log = logging.getLogger(__name__)


MAX_SUBSTEPS = 16  # CARLA's upper bound on physics substeps per tick
SUBSTEP_SECONDS = 0.01  # CARLA's default max_substep_delta_time


def substep_settings(timestep: float) -> tuple[float, int]:
    """(max_substep_delta_time, max_substeps) with timestep <= their product, as CARLA's physics needs."""
    substeps = max(1, math.ceil(timestep / SUBSTEP_SECONDS - 1e-9))
    if substeps <= MAX_SUBSTEPS:
        return SUBSTEP_SECONDS, substeps
    return timestep / MAX_SUBSTEPS, MAX_SUBSTEPS


def nvidia_gpu_indices() -> dict[str, int]:
    """GPU and MIG UUIDs -> the index of their physical GPU, from `nvidia-smi -L` ({} without it)."""
    import re
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    index, out = None, {}
    for line in listing.splitlines():
        gpu = re.match(r"\s*GPU (\d+):", line)
        if gpu:
            index = int(gpu.group(1))
        uuid = re.search(r"UUID: ((?:GPU|MIG)-[^)\s]+)", line)
        if uuid and index is not None:
            out[uuid.group(1)] = index
    return out


def visible_gpus() -> list[int]:
    """Graphics adapters this process may use: CUDA_VISIBLE_DEVICES by index or by GPU/MIG UUID
    (a MIG slice runs the server on its physical GPU); [] when none can be named."""
    ids = [i.strip() for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()]
    if ids:
        if all(i.isdigit() for i in ids):
            return [int(i) for i in ids]
        by_uuid = nvidia_gpu_indices()
        return list(dict.fromkeys(by_uuid[i] for i in ids if i in by_uuid))
    return [int(p.name[len("card") :]) for p in Path("/dev/dri").glob("card[0-9]*")] or [0]


def start_server(
    sc: CarlaServerConfig, slot: int, root: str | None, rendering: bool, log_dir: Path
) -> CarlaServer:
    """A server for `slot` on leased ports and its GPU (round-robin), started, not yet waited for."""
    gpus = sc.gpus or visible_gpus()
    gpu = gpus[slot % len(gpus)] if gpus else None  # None: the engine picks its adapter
    lease = lease_ports(sc.port, sc.tm_port, slot)
    ports = lease.ports
    try:
        cmd = server_command(root, ports, sc.quality, gpu, rendering, sc.extra_args)
    except ServerError:
        lease.release()
        raise
    server = CarlaServer(cmd, ports, log_dir / f"carla_{ports.rpc}.log", sc.host, lease=lease)
    server.start()
    return server


def new_health() -> dict:
    """A core's server health: relaunches and tick times (both CARLA cores keep one)."""
    return {"restarts": 0, "tick_seconds_max": 0.0, "tick_seconds_mean": 0.0, "ticks": 0}


def record_tick(health: dict, seconds: float) -> None:
    health["ticks"] += 1
    health["tick_seconds_max"] = max(health["tick_seconds_max"], seconds)
    health["tick_seconds_mean"] += (seconds - health["tick_seconds_mean"]) / health["ticks"]


def health_stats(health: dict) -> dict[str, float]:
    """SimulatorCore.stats() from a core's health."""
    return {
        "server_restarts": float(health["restarts"]),
        "tick_ms_mean": 1e3 * health["tick_seconds_mean"],
        "tick_ms_max": 1e3 * health["tick_seconds_max"],
    }


def recycle_reason(server: CarlaServer | None, sc: CarlaServerConfig, episodes: int) -> str | None:
    """Why a healthy launched server is due for a relaunch (episodes or memory), else None."""
    if server is None:
        return None
    if sc.recycle_episodes and episodes >= sc.recycle_episodes:
        return f"recycled after {episodes} episodes"
    if sc.recycle_rss_gb and server.rss_bytes() > sc.recycle_rss_gb * 2**30:
        return f"recycled above {sc.recycle_rss_gb} GB RSS"
    return None


def on_driving_lane(town_map: carla.Map, actor) -> bool:
    loc = actor.get_location()
    return town_map.get_waypoint(loc, project_to_road=False, lane_type=carla.LaneType.Driving) is not None


class CarlaCore:
    """A CARLA server's world (satisfies carla_env.simulator.SimulatorCore)."""

    backend = "carla"
    sensor_types = (*EVENT_SENSORS, BIRDVIEW, OBSTACLE_SENSOR, *STREAM_SENSORS)

    def __init__(
        self,
        config: SimulatorConfig,
        hero_blueprint: str = "vehicle.tesla.model3",
        slot: int = 0,
        rendering: bool = False,
        client_factory=carla.Client,
        probe=carla_probe,
        log_dir: Path | None = None,
    ) -> None:
        self.config, self.server_config = config, config.carla
        self.hero_blueprint, self.slot, self.rendering = hero_blueprint, slot, rendering
        self._client_factory, self._probe = client_factory, probe
        self._log_dir = Path(log_dir or os.environ.get("CARLA_ENV_LOGS", "runs/carla_logs"))
        root = self.server_config.carla_root or os.environ.get("CARLA_ROOT")
        self._root = root
        self.town = load_town(config.town, root)
        self._source = resolve_town(config.town, root)
        self.server: CarlaServer | None = None
        self.client = self.world = self.map = self.tm = self.hero = None
        self._loaded_town: str | None = None
        self._npcs: list[int] = []
        self._walkers: list[tuple[int, int]] = []  # (walker, its AI controller)
        self._episodes_since_launch = 0
        self.health = new_health()
        self._scene: tuple[int, Scene] | None = None  # (hero id, this tick's scene)
        self._connect()

    # --------------------------------------------------------------------------------- the server
    def _connect(self) -> None:
        sc = self.server_config
        if sc.launch:
            self.server = start_server(sc, self.slot, self._root, self.rendering, self._log_dir)
            self.server.wait_ready(sc.ready_timeout, self._probe)
            rpc, tm_port = self.server.ports.rpc, self.server.ports.tm
        else:
            rpc, tm_port = sc.port, sc.tm_port + self.slot
        self.client = self._client_factory(sc.host, rpc)
        self.client.set_timeout(sc.client_timeout)
        self.tm_port = tm_port
        self._loaded_town = None
        self._episodes_since_launch = 0

    @contextlib.contextmanager
    def _client_timeout(self, seconds: float):
        """LibCarla bounds a map load by the client's time-out: a long one around it, then the usual."""
        self.client.set_timeout(seconds)
        try:
            yield
        finally:
            self.client.set_timeout(self.server_config.client_timeout)

    def _load_world(self) -> None:
        """Load the town only when it changes (reloading leaks server memory); sync mode on world and TM."""
        if self._loaded_town != self.config.town:
            with self._client_timeout(self.server_config.map_load_timeout):
                if self._source.kind == "carla":
                    self.world = self.client.load_world(self._source.name, True, self._map_layers())
                else:  # our generated towns and .xodr files; a navigation mesh only for walkers (slow)
                    self.world = self.client.generate_opendrive_world(
                        self.town.xodr,
                        carla.OpendriveGenerationParameters(
                            wall_height=0.0,
                            smooth_junctions=True,
                            enable_pedestrian_navigation=self.server_config.walkers > 0,
                        ),
                    )
            self._loaded_town = self.config.town
        elif self.world is None:
            self.world = self.client.get_world()
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.config.timestep
        settings.substepping = True
        settings.max_substep_delta_time, settings.max_substeps = substep_settings(self.config.timestep)
        settings.no_rendering_mode = not self.rendering
        self.world.apply_settings(settings)
        self.map = self.world.get_map()
        self.tm = self.client.get_trafficmanager(self.tm_port)
        self.tm.set_synchronous_mode(True)
        self.world.set_weather(getattr(carla.WeatherParameters, self.server_config.weather))

    def _map_layers(self) -> carla.MapLayer:
        return carla.MapLayer(
            functools.reduce(
                operator.or_, (int(carla.MapLayer.names[n]) for n in self.server_config.map_layers), 0
            )
        )

    def _relaunch(self, reason: str) -> None:
        """Kill the server's group, start a fresh one and rebuild client, world and Traffic Manager."""
        log.warning("CARLA slot %d: %s; relaunching", self.slot, reason)
        self.health["restarts"] += 1
        self._shut_down_tm()
        if self.server is not None:
            self.server.stop()
        self.server = None
        self.world = self.hero = None
        self._npcs, self._walkers = [], []  # their ids died with the server
        self._connect()
        self._load_world()

    def _shut_down_tm(self) -> None:
        """LibCarla keeps one TM registry per process: a TM left behind would be ticked by the next
        client, reset on its next map change and keep its port, so it goes before its client."""
        if self.tm is None:
            return
        try:
            self.tm.shut_down()
        except RuntimeError as e:  # a dead server's TM: its threads are stopped all the same
            log.warning("CARLA slot %d: Traffic Manager shut-down: %s", self.slot, e)
        self.tm = None

    def restart(self, reason: str) -> NoReturn:
        """Replace a crashed or hung server (a tick past its time-out, a camera that stopped streaming);
        the running episode is over: raises SimulatorRestarted. A relaunch that fails is a ServerError."""
        try:
            self._relaunch(reason)
        except ServerError:
            raise
        except RuntimeError as e:  # the fresh server hung or died too (map load, settings)
            where = f"; log: {self.server.log_path}" if self.server is not None else ""
            raise ServerError(f"CARLA slot {self.slot}: relaunch after '{reason}' failed: {e}{where}") from e
        raise SimulatorRestarted(reason)

    def _recycle_due(self) -> str | None:
        return recycle_reason(self.server, self.server_config, self._episodes_since_launch)

    # ------------------------------------------------------------------------------------ episodes
    def reset(self, seed: int | None = None, hero_transform: carla.Transform | None = None) -> None:
        """A new episode; a dead or hung server on the way is relaunched and the reset tried once more."""
        pending = self._recycle_due()
        if pending is None and self.server is not None and not self.server.alive():
            pending = f"CARLA server (pid {self.server.pid}) died between episodes"
        failure = ""
        for _ in range(2):
            try:
                if pending is not None:
                    self._relaunch(pending)
                    pending = None
                self._start_episode(seed, hero_transform)
                return
            except ServerError:  # a launch that failed, no free spawn point: another try won't help
                raise
            except SimulatorRestarted as e:  # the episode's first tick already relaunched the server
                failure = str(e)
            except RuntimeError as e:  # LibCarla's time-out or lost connection: a hung or dead server
                failure = f"{e}"
                pending = f"reset failed ({failure})"
        where = f"; log: {self.server.log_path}" if self.server is not None else ""
        raise ServerError(
            f"CARLA slot {self.slot}: reset failed again on a relaunched server: {failure}{where}"
        )

    def _start_episode(self, seed: int | None, hero_transform: carla.Transform | None) -> None:
        self._scene = None
        if self.world is None or self._loaded_town != self.config.town:
            self._load_world()
        self._destroy_actors()
        seed = self.config.seed if seed is None else seed
        self.tm.set_random_device_seed(seed)
        rng = np.random.default_rng(seed)
        library = self.world.get_blueprint_library()
        hero_bp = library.find(self.hero_blueprint)
        hero_bp.set_attribute("role_name", "hero")
        # The lane graph's spawn slots (as on the embedded backend), shuffled by the episode seed.
        points = self.town.spawn_points(
            seed=int(rng.integers(2**31)), spacing=self.config.traffic.spawn_spacing
        )
        for hero_at in [hero_transform] if hero_transform is not None else points:
            self.hero = self.world.try_spawn_actor(hero_bp, hero_at)
            if self.hero is not None:
                break
        if self.hero is None:
            raise ServerError(f"no free spawn point for the hero in {self.config.town}")
        # Around the spawn transform: the hero's get_location() is (0, 0, 0) until the next tick.
        self._spawn_traffic(library, points, rng, hero_at.location)
        self._spawn_walkers(library, seed, rng)
        self._episodes_since_launch += 1
        self.tick(None)

    def _spawn_traffic(self, library, points, rng, hero_at: carla.Location) -> None:
        """Background vehicles in one synchronous batch, then autopilot on this core's TM port."""
        count = self.config.traffic.vehicles
        if not count:
            return
        vehicles = [
            bp for bp in library.filter("vehicle.*") if bp.get_attribute("number_of_wheels").as_int() == 4
        ]
        free = [p for p in points if p.location.distance(hero_at) > 10.0]
        picks = rng.permutation(len(free))[:count]
        spawn = [
            carla.command.SpawnActor(vehicles[int(rng.integers(len(vehicles)))], free[int(k)]) for k in picks
        ]
        ids = [r.actor_id for r in self.client.apply_batch_sync(spawn, True) if not r.error]
        self.client.apply_batch_sync([carla.command.SetAutopilot(i, True, self.tm_port) for i in ids], True)
        self._npcs = ids

    def _spawn_walkers(self, library, seed: int, rng) -> None:
        """Pedestrians on the navigation mesh in one batch, then their AI controllers in another."""
        count = self.server_config.walkers
        if not count:
            return
        self.world.set_pedestrians_seed(seed)
        self.world.set_pedestrians_cross_factor(self.server_config.walker_cross_factor)
        spots = [self.world.get_random_location_from_navigation() for _ in range(count)]
        spots = [s for s in spots if s is not None]  # a town without sidewalks has no mesh
        people = list(library.filter("walker.pedestrian.*"))
        if not spots or not people:
            return
        batch = [
            carla.command.SpawnActor(people[int(rng.integers(len(people)))], carla.Transform(s))
            for s in spots
        ]
        walkers = [r.actor_id for r in self.client.apply_batch_sync(batch, True) if not r.error]
        brain = library.find("controller.ai.walker")
        batch = [carla.command.SpawnActor(brain, carla.Transform(), w) for w in walkers]
        results = self.client.apply_batch_sync(batch, True)
        pairs = [(w, r.actor_id) for w, r in zip(walkers, results, strict=True) if not r.error]
        self._walkers = pairs
        self.world.tick(self.server_config.tick_timeout)  # controllers start after their first tick
        for controller in self.world.get_actors([c for _, c in pairs]):
            controller.start()
            destination = self.world.get_random_location_from_navigation()
            if destination is not None:
                controller.go_to_location(destination)
            controller.set_max_speed(float(rng.uniform(1.0, 1.6)))  # walking pace, m/s

    def tick(self, control: carla.VehicleControl | None) -> int:
        if self.server is not None and not self.server.alive():
            self.restart(f"CARLA server (pid {self.server.pid}) died; log: {self.server.log_path}")
        if control is not None:
            self.hero.apply_control(control)
        t0 = time.perf_counter()
        try:
            frame = self.world.tick(self.server_config.tick_timeout)
        except RuntimeError as e:  # the client's time-out: a hung server
            self.restart(f"tick exceeded {self.server_config.tick_timeout:.0f} s ({e})")
        dt = time.perf_counter() - t0
        record_tick(self.health, dt)
        self._scene = None
        return frame

    def on_driving_lane(self, actor) -> bool:
        return on_driving_lane(self.map, actor)

    def birdview_scene(self, hero) -> Scene:
        """Built once a tick (the BEV and the reward ask; CARLA's snapshot changes only with a tick)."""
        if self._scene is None or self._scene[0] != hero.id:
            self._scene = (hero.id, scene_from_world(self.world, hero, self.town.lanes))
        return self._scene[1]

    def stats(self) -> dict[str, float]:
        return health_stats(self.health)

    # --------------------------------------------------------------------------------------- close
    def _destroy_actors(self) -> None:
        """Walker controllers stopped first (a destroyed walker under a running one crashes the server)."""
        if self.client is None:
            return
        if self._walkers:
            for controller in self.world.get_actors([c for _, c in self._walkers]):
                controller.stop()
        ids = [i for pair in self._walkers for i in pair[::-1]] + list(self._npcs)
        ids += [self.hero.id] if self.hero is not None else []
        if ids:
            self.client.apply_batch_sync([carla.command.DestroyActor(i) for i in ids], True)
        self._npcs, self._walkers, self.hero = [], [], None

    def close(self) -> None:
        """Actors destroyed in one batch (the env stops its sensors first), sync off, server group killed."""
        try:
            if self.world is not None and (self.server is None or self.server.alive()):
                self._destroy_actors()
                if self.tm is not None:
                    self.tm.set_synchronous_mode(False)
                    self._shut_down_tm()
                settings = self.world.get_settings()
                settings.synchronous_mode = False
                settings.fixed_delta_seconds = None
                self.world.apply_settings(settings)
        except RuntimeError:
            pass  # a dead server: nothing left to tidy on its side
        finally:
            if self.server is not None:
                self.server.stop()
            self.server = None
            self.world = self.client = self.tm = None
