"""The embedded world: an in-process simulator answering the CARLA World API subset experiments use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import carla
import numpy as np

from carla_env.embedded.actors import (
    Actor,
    ActorList,
    CollisionEvent,
    LaneInvasionEvent,
    LaneMarking,
    Sensor,
    TrafficLight,
    Vehicle,
    Walker,
    WalkerAIController,
    WorldSnapshot,
)
from carla_env.embedded.blueprints import (
    VEHICLES,
    WALKER_CONTROLLER,
    WALKERS,
    ActorBlueprint,
    BlueprintLibrary,
)
from carla_env.embedded.dynamics import step_bicycle
from carla_env.embedded.kernels import (
    STEERED,
    overlapping_pairs,
    overlapping_pairs_between,
    painted_markings,
    road_users,
    scene_boxes,
)
from carla_env.embedded.traffic import GREEN, RED, YELLOW, LaneTables, Traffic
from carla_env.embedded.walkers import WalkerCrowd
from carla_env.maps.geometry import lane_pose
from carla_env.maps.sidewalks import NoSidewalks, WalkGraph, build_walk_graph
from carla_env.maps.town import Town
from carla_env.sensors.birdview import Scene

DEFAULT_DELTA = 0.05
ON_LANE_TOLERANCE = 0.5  # m beyond a lane's half width still counted as on it (tyres over the line)
WALKER_HALF_LENGTH = WALKERS["walker.pedestrian.0001"][0]  # a walker in the way, to traffic
_NO_LANES, _NO_S = np.zeros(0, np.int64), np.zeros(0)
_NO_BOXES, _NO_VELOCITIES = np.zeros((0, 5)), np.zeros((0, 2))
LIGHT_REACH = 15.0  # m before a stop line where a vehicle is at its light (get_traffic_light)
UNMARKED = int(carla.LaneMarkingType.NONE)  # junction lanes: no paint, nothing to invade
_TABLES: dict[str, LaneTables] = {}
_WALKS: dict[str, WalkGraph | None] = {}
WALKER_SEED_SALT = 0x57414C4B  # walkers draw from their own stream: walkers: 0 leaves the world as it was


@dataclass(frozen=True)
class LightTiming:
    green: float = 10.0
    yellow: float = 3.0
    red: float = 2.0  # all-red clearance after each phase


class _FreeVehicles:
    """Struct-of-arrays state of vehicles driven by their controls (heroes)."""

    FIELDS = (
        "x",
        "y",
        "z",
        "yaw",
        "v",
        "acc",
        "yaw_rate",
        "wheelbase",
        "throttle",
        "steer",
        "brake",
        "reverse",
        "hand_brake",
        "lane",
        "s",
        "lane_yaw",
        "on_lane",
        "marking_overlap",
    )

    def __init__(self) -> None:
        for f in self.FIELDS:
            setattr(self, f, np.zeros(0))
        self.half = np.zeros((0, 3))

    def add(self, x, y, z, yaw, half, wheelbase) -> int:
        values = dict.fromkeys(self.FIELDS, 0.0)
        values.update(x=x, y=y, z=z, yaw=yaw, wheelbase=wheelbase, lane=-1)
        for f in self.FIELDS:
            setattr(self, f, np.append(getattr(self, f), values[f]))
        self.half = np.vstack([self.half, half])
        return len(self.x) - 1

    def remove(self, row: int) -> None:
        for f in self.FIELDS:
            setattr(self, f, np.delete(getattr(self, f), row))
        self.half = np.delete(self.half, row, axis=0)


class EmbeddedWorld:
    """One town, one hero (or more), N NPC vehicles, traffic lights; synchronous by construction."""

    def __init__(
        self,
        town: Town,
        seed: int = 0,
        delta_seconds: float = DEFAULT_DELTA,
        light_timing: LightTiming | None = None,
    ) -> None:
        self.town = town
        self.id = 1
        self.frame = 0
        self.elapsed_seconds = 0.0
        self._settings = carla.WorldSettings()
        self._settings.synchronous_mode = True
        self._settings.fixed_delta_seconds = delta_seconds
        self._weather = carla.WeatherParameters.ClearNoon
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._crowd: WalkerCrowd | None = None  # built with the first walker (the walk graph costs ~0.5 s)
        self._walker_actors: list[Walker] = []
        self._next_id = 100
        self._blueprints = BlueprintLibrary()

        tables = _TABLES.get(town.lanes.xodr_hash)
        if tables is None:
            tables = _TABLES[town.lanes.xodr_hash] = LaneTables(town.lanes)
        self._tables = tables
        self.traffic = Traffic(tables, np.random.default_rng(self._rng.integers(2**63)))
        self._free = _FreeVehicles()
        self._free_actors: list[Vehicle] = []
        self._npc_actors: list[Vehicle] = []
        self._npc_half = np.zeros((0, 3))
        self._sensors: list[Sensor] = []
        self._actors: dict[int, Actor] = {}
        self._actors_changed = 0  # spawns and destroys: a cached scene is stale after one
        self._scene_cache: tuple | None = None  # ((frame, hero id, _actors_changed), Scene)
        self.collisions: list[tuple[int, int]] = []  # actor id pairs in contact at the last tick

        g = town.lanes
        self._timing = light_timing or LightTiming()
        junctions = np.unique(g.light_junction)
        offsets = dict(zip(junctions.tolist(), self._rng.uniform(0, 1, len(junctions)).tolist(), strict=True))
        self._light_offset = np.array([offsets[j] for j in g.light_junction.tolist()])
        self._light_state = np.full(len(g.light_id), GREEN, np.int64)
        self._lights_valid_until = -1.0
        self._lights = [
            self._register(TrafficLight(self, self._new_id(), t, g.light_location[t]))
            for t in range(len(g.light_id))
        ]
        self._update_lights()

    # ------------------------------------------------------------------ CARLA World API
    def get_map(self) -> carla.Map:
        return self.town.map

    def get_settings(self) -> carla.WorldSettings:
        return self._settings

    def apply_settings(self, settings: carla.WorldSettings) -> int:
        if not settings.fixed_delta_seconds or settings.fixed_delta_seconds <= 0:
            raise ValueError("the embedded world is synchronous: set fixed_delta_seconds > 0")
        self._settings = settings
        return self.frame

    @property
    def delta_seconds(self) -> float:
        return float(self._settings.fixed_delta_seconds)

    def get_weather(self) -> carla.WeatherParameters:
        return self._weather

    def set_weather(self, weather: carla.WeatherParameters) -> None:
        self._weather = weather

    def get_blueprint_library(self) -> BlueprintLibrary:
        return self._blueprints

    def get_snapshot(self) -> WorldSnapshot:
        return WorldSnapshot(self)

    def get_random_location_from_navigation(self) -> carla.Location | None:
        """A random point on a sidewalk (CARLA: on the navigation mesh), from the pedestrians' seed;
        None in a town without sidewalks (CARLA: without a mesh)."""
        if self._walk_graph() is None:
            return None
        crowd = self._walkers()
        x, y, z = crowd.graph.node_xyz[crowd.random_node()]
        return carla.Location(float(x), float(y), float(z))

    def set_pedestrians_seed(self, seed: int) -> None:
        self._walkers().rng = np.random.default_rng([int(seed), WALKER_SEED_SALT])

    def set_pedestrians_cross_factor(self, percentage: float) -> None:
        """Share of walker routes allowed to cross roads anywhere, not only at crossings."""
        self._walkers().cross_factor = float(percentage)

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        actors = list(self._actors.values())
        if actor_ids is not None:
            wanted = set(actor_ids)
            actors = [a for a in actors if a.id in wanted]
        return ActorList(actors)

    def get_actor(self, actor_id: int) -> Actor | None:
        return self._actors.get(actor_id)

    def spawn_actor(
        self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None
    ):
        actor = self.try_spawn_actor(blueprint, transform, attach_to)
        if actor is None:
            raise RuntimeError("Spawn failed because of collision at spawn position")
        return actor

    def try_spawn_actor(
        self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None
    ):
        attributes = {a.id: a.value for a in blueprint}
        if blueprint.id.startswith("sensor."):
            if attach_to is None:
                raise ValueError(f"{blueprint.id} must be attached to a vehicle (attach_to=...)")
            sensor = Sensor(self, self._new_id(), blueprint.id, attributes, attach_to)
            self._sensors.append(sensor)
            return self._register(sensor)
        if blueprint.id == WALKER_CONTROLLER:
            if not isinstance(attach_to, Walker):
                raise ValueError(f"{WALKER_CONTROLLER} must be attached to a walker (attach_to=walker)")
            return self._register(
                WalkerAIController(self, self._new_id(), blueprint.id, attributes, attach_to)
            )
        if blueprint.id in WALKERS:
            return self._spawn_walker(blueprint.id, attributes, transform)
        if blueprint.id not in VEHICLES:
            raise ValueError(f"the embedded world cannot spawn {blueprint.id!r}")
        ex, ey, ez, wheelbase = VEHICLES[blueprint.id]
        loc, yaw = transform.location, np.radians(transform.rotation.yaw)
        lane, s, _ = self.town.lanes.locate(np.array([loc.x, loc.y, loc.z]), yaw)
        z = float(self.town.lanes.interpolate(np.array([lane]), np.array([s]))[0][0, 2])
        if self._overlaps(np.array([loc.x, loc.y, z]), yaw, np.array([ex, ey, ez])):
            return None
        row = self._free.add(loc.x, loc.y, z, yaw, (ex, ey, ez), wheelbase)
        vehicle = Vehicle(self, self._new_id(), blueprint.id, attributes, (ex, ey, ez))
        vehicle._row, vehicle._npc = row, False
        self._free_actors.append(vehicle)
        self._locate_free()
        return self._register(vehicle)

    def tick(self, seconds: float = 10.0) -> int:
        dt = self.delta_seconds
        self._update_lights()
        f = self._free
        walker_lane, walker_s = self._walkers_in_the_way()
        *users, obstacles = road_users(
            f.yaw, f.lane_yaw, f.lane, f.s, f.v, f.half, f.x, f.y, f.z, walker_lane, walker_s, WALKER_HALF_LENGTH
        )  # fmt: skip
        self.traffic.step(dt, self._light_state, *users, obstacles=obstacles)
        if len(f.x):
            step_bicycle(
                f.x,
                f.y,
                f.yaw,
                f.v,
                f.wheelbase,
                f.throttle,
                f.steer,
                f.brake,
                f.reverse,
                f.hand_brake,
                dt,
                f.acc,
                f.yaw_rate,
            )
            self._locate_free()
        self.frame += 1
        self.elapsed_seconds += dt
        self._detect_collisions()
        self._detect_lane_invasions()
        return self.frame

    def wait_for_tick(self, seconds: float = 10.0) -> WorldSnapshot:
        self.tick(seconds)
        return self.get_snapshot()

    # ------------------------------------------------------------------ embedded-only helpers
    def spawn_traffic(self, count: int, spacing: float = 12.0) -> list[Vehicle]:
        """Spawn up to `count` NPC vehicles on free spawn slots (deterministic per world seed)."""
        lanes, ss = self.town.spawn_candidates(spacing)
        order = self._rng.permutation(len(lanes))
        pos, yaw = self.town.lanes.interpolate(lanes[order], ss[order])
        bp_ids = list(VEHICLES)
        chosen, types = [], []
        taken = np.concatenate(
            [np.column_stack([self._free.x, self._free.y, self._free.z]), self.traffic.xyz]
        )
        for k in range(len(order)):
            if len(chosen) >= count:
                break
            if len(taken) and (np.linalg.norm(taken - pos[k], axis=1) < spacing * 0.9).any():
                continue
            chosen.append(k)
            types.append(bp_ids[self._rng.integers(len(bp_ids))])
            taken = np.vstack([taken, pos[k]])
        if not chosen:
            return []
        return self.spawn_npcs_at(lanes[order[chosen]], ss[order[chosen]], types)

    def spawn_walkers(self, count: int, seed: int = 0, cross_factor: float = 0.0) -> list[Walker]:
        """Up to `count` pedestrians set up through the CARLA API as the CARLA core sets up its own:
        random sidewalk spots, an AI controller each, a random destination, a walking pace of
        1.0-1.6 m/s. None in a town without sidewalks (as CARLA's without a navigation mesh)."""
        if not count or self.get_random_location_from_navigation() is None:
            return []
        self.set_pedestrians_seed(seed)
        self.set_pedestrians_cross_factor(cross_factor)
        rng = np.random.default_rng([seed, 1])
        library = self.get_blueprint_library()
        people = library.filter("walker.pedestrian.*")
        brain = library.find(WALKER_CONTROLLER)
        spawned = []
        for _ in range(count):
            spot = self.get_random_location_from_navigation()
            walker = self.try_spawn_actor(people[int(rng.integers(len(people)))], carla.Transform(spot))
            if walker is None:
                continue
            controller = self.spawn_actor(brain, carla.Transform(), attach_to=walker)
            controller.start()
            controller.go_to_location(self.get_random_location_from_navigation())
            controller.set_max_speed(float(rng.uniform(1.0, 1.6)))
            spawned.append(walker)
        return spawned

    def spawn_npcs_at(self, lanes: np.ndarray, s: np.ndarray, blueprint_ids: list[str]) -> list[Vehicle]:
        """NPC vehicles at distance s along lanes (lane indices of the town's lane graph)."""
        halves = np.array([VEHICLES[bp][:3] for bp in blueprint_ids]).reshape(-1, 3)
        first = self.traffic.count
        self.traffic.add(np.asarray(lanes), np.asarray(s, float), halves[:, 0])
        self._npc_half = np.vstack([self._npc_half, halves])
        spawned = []
        for k, bp in enumerate(blueprint_ids):
            vehicle = Vehicle(self, self._new_id(), bp, {"role_name": "autopilot"}, tuple(halves[k]))
            vehicle._row, vehicle._npc = first + k, True
            self._npc_actors.append(vehicle)
            spawned.append(self._register(vehicle))
        return spawned

    def birdview_scene(self, hero: Vehicle) -> Scene:
        """The birdview Scene around `hero`, straight from the arrays (what `scene_from_world` builds
        through the CARLA API, rounded the same way); built once a frame (the BEV and the reward ask)."""
        key = (self.frame, hero.id, self._actors_changed)
        if self._scene_cache is None or self._scene_cache[0] != key:
            self._scene_cache = (key, self._build_scene(hero))
        return self._scene_cache[1]

    def _build_scene(self, hero: Vehicle) -> Scene:
        f, t = self._free, self.traffic
        hero_row = hero._row if not hero._npc else len(f.x) + hero._row
        pos, yaws, halves = self._all_boxes()
        speeds = np.concatenate([f.v, t.v])
        vehicles, vehicle_velocities, ego = scene_boxes(pos, yaws, halves, speeds, hero_row)
        v = hero.get_velocity()  # as scene_from_world reads it
        walkers, walker_velocities = _NO_BOXES, _NO_VELOCITIES
        if self._crowd is not None:
            c = self._crowd.state
            walkers, walker_velocities, _ = scene_boxes(c.xyz, c.yaw, self._crowd.half, c.v, -1)
        return Scene(
            ego=ego,
            vehicles=vehicles,
            walkers=walkers,
            light_states=self._light_state.copy(),
            ego_speed=math.hypot(v.x, v.y),
            walker_velocities=walker_velocities,
            vehicle_velocities=vehicle_velocities,
        )

    def on_driving_lane(self, vehicle: Vehicle) -> bool:
        """Off-road detection: is the vehicle's centre within a driving lane (tyres on the line allowed)?"""
        if vehicle._npc:
            return True  # NPCs drive on lane centre lines by construction
        return bool(self._free.on_lane[vehicle._row])

    @property
    def light_states(self) -> np.ndarray:
        return self._light_state

    # ------------------------------------------------------------------ internals
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _register(self, actor: Actor) -> Actor:
        self._actors[actor.id] = actor
        self._actors_changed += 1
        return actor

    def _destroy(self, actor: Actor) -> None:
        self._actors.pop(actor.id, None)
        self._actors_changed += 1
        if isinstance(actor, Sensor):
            self._sensors.remove(actor)
        elif isinstance(actor, WalkerAIController):
            actor.stop()
            actor.parent._controller = None
        elif isinstance(actor, Walker):
            if actor._controller is not None:
                actor._controller.destroy()
            self._crowd.remove(actor._row)
            self._walker_actors.pop(actor._row)
            for row, other in enumerate(self._walker_actors):
                other._row = row
        elif isinstance(actor, Vehicle):
            for sensor in [s for s in self._sensors if s.parent is actor]:
                sensor.destroy()
            block = self._npc_actors if actor._npc else self._free_actors
            if actor._npc:
                self.traffic.remove(actor._row)
                self._npc_half = np.delete(self._npc_half, actor._row, axis=0)
            else:
                self._free.remove(actor._row)
            block.pop(actor._row)
            for row, other in enumerate(block):
                other._row = row

    def _vehicle_pose(self, v: Vehicle):
        if v._npc:
            return self.traffic.xyz[v._row], float(self.traffic.yaw[v._row])
        f = self._free
        return (f.x[v._row], f.y[v._row], f.z[v._row]), float(f.yaw[v._row])

    def _vehicle_speed(self, v: Vehicle) -> float:
        return float(self.traffic.v[v._row] if v._npc else self._free.v[v._row])

    def _vehicle_accel(self, v: Vehicle) -> float:
        return float(self.traffic.accel[v._row] if v._npc else self._free.acc[v._row])

    def _vehicle_yaw_rate(self, v: Vehicle) -> float:
        return 0.0 if v._npc else float(self._free.yaw_rate[v._row])

    def _vehicle_lane(self, v: Vehicle) -> tuple[int, float]:
        if v._npc:
            return int(self.traffic.plan[v._row, 0]), float(self.traffic.s[v._row])
        return int(self._free.lane[v._row]), float(self._free.s[v._row])

    def _vehicle_speed_limit(self, v: Vehicle) -> float:
        lane, _ = self._vehicle_lane(v)
        return float(self.town.lanes.lane_speed_limit[lane]) if lane >= 0 else 0.0

    def _vehicle_traffic_light(self, v: Vehicle):
        """The light whose stop line is at most LIGHT_REACH ahead on the vehicle's road, as CARLA's
        trigger volume reaches back along the approach: across lane sections too (real towns split
        roads into sections, some a few metres long, just before the stop line)."""
        lane, s = self._vehicle_lane(v)
        g = self.town.lanes
        if lane < 0:
            return None
        ahead = g.lane_length[lane] - s  # metres to the end of the lane
        while g.lane_light[lane] < 0:
            succ = g.successors(lane)
            if ahead > LIGHT_REACH or len(succ) != 1 or g.lane_junction[succ[0]] >= 0:
                return None
            lane = int(succ[0])
            ahead += max(g.lane_length[lane], 0.1)  # a few-millimetre section still moves us on
        return self._lights[g.lane_light[lane]] if ahead <= LIGHT_REACH else None

    def _apply_control(self, v: Vehicle, c: carla.VehicleControl) -> None:
        if v._npc:
            raise RuntimeError("NPC vehicles are driven by the embedded traffic model")
        f, r = self._free, v._row
        f.throttle[r], f.steer[r], f.brake[r] = c.throttle, c.steer, c.brake
        f.reverse[r], f.hand_brake[r] = float(c.reverse), float(c.hand_brake)

    # ------------------------------------------------------------------ walkers
    def _walk_graph(self) -> WalkGraph | None:
        """The town's sidewalks and crossings (built once per town), None if it has no sidewalk."""
        g = self.town.lanes
        if g.xodr_hash not in _WALKS:
            try:
                _WALKS[g.xodr_hash] = build_walk_graph(self.town.map, self.town.xodr, g)
            except NoSidewalks:
                _WALKS[g.xodr_hash] = None
        return _WALKS[g.xodr_hash]

    def _walkers(self) -> WalkerCrowd:
        if self._crowd is None:
            graph = self._walk_graph()
            if graph is None:
                raise RuntimeError(
                    f"town {self.town.name!r} has no sidewalk lanes: nowhere for walkers to walk"
                )
            self._crowd = WalkerCrowd(graph, np.random.default_rng([self._seed, WALKER_SEED_SALT]))
        return self._crowd

    def _spawn_walker(self, bp_id: str, attributes: dict, transform: carla.Transform):
        crowd = self._walkers()
        loc = transform.location
        node = crowd.nearest_node((loc.x, loc.y, loc.z))
        half = np.array(WALKERS[bp_id])
        pos, yaws, halves = self._all_boxes()
        # where it is asked for (a scenario may put one on the road), on the ground of the nearest sidewalk
        at = np.array([[loc.x, loc.y, crowd.graph.node_xyz[node][2]]])
        if len(pos) and len(overlapping_pairs_between(pos, yaws, halves, at, np.zeros(1), half[None])[0]):
            return None  # as CARLA: no spawn into a vehicle
        row = crowd.add(at[0], half)
        walker = Walker(self, self._new_id(), bp_id, attributes, tuple(half))
        walker._row = row
        self._walker_actors.append(walker)
        return self._register(walker)

    def _walker_pose(self, w: Walker):
        s = self._crowd.state
        p = s.xyz[w._row].copy()
        p[2] += self._crowd.half[w._row, 2]  # the body's centre, as CARLA reports a walker's location
        return p, float(s.yaw[w._row])

    def _walker_speed(self, w: Walker) -> float:
        return float(self._crowd.state.v[w._row])

    def _walker_steer(self, w: Walker, control: carla.WalkerControl) -> None:
        self._crowd.steer(w._row, control.direction, control.speed)

    def _walker_start(self, w: Walker) -> None:
        self._crowd.start(w._row)

    def _walker_stop(self, w: Walker) -> None:
        self._crowd.stop(w._row)

    def _walker_go_to(self, w: Walker, destination: carla.Location) -> None:
        self._crowd.go_to(w._row, (destination.x, destination.y, destination.z))

    def _walker_max_speed(self, w: Walker, speed: float) -> None:
        self._crowd.state.max_speed[w._row] = speed

    def _walkers_in_the_way(self) -> tuple[np.ndarray, np.ndarray]:
        """(lane, s) of the walkers traffic yields to: those on crossings (as of the last walker step) and
        any walker steered by WalkerControl that stands on a lane."""
        if self._crowd is None or not self._crowd.count:
            return _NO_LANES, _NO_S
        on_lane, at_s = self._crowd.in_the_way
        if self._crowd.steered:
            steered = np.flatnonzero(self._crowd.state.mode == STEERED)
            g, extra = self.town.lanes, []
            for row in steered.tolist():
                lane, at, dist = g.locate(self._crowd.state.xyz[row])
                if dist <= g.lane_width[lane] / 2 + self._crowd.half[row, 1]:
                    extra.append((lane, at))
            if extra:
                on_lane = np.concatenate([on_lane, np.array([e[0] for e in extra], np.int64)])
                at_s = np.concatenate([at_s, np.array([e[1] for e in extra])])
        return on_lane, at_s

    def _update_lights(self) -> None:
        """Light states from the clock; recomputed only when some light is due to change."""
        g = self.town.lanes
        if not len(g.light_id) or self.elapsed_seconds < self._lights_valid_until:
            return
        tm = self._timing
        slot = tm.green + tm.yellow + tm.red
        local = np.remainder(
            self.elapsed_seconds + self._light_offset * slot * g.light_phases, slot * g.light_phases
        )
        active = (local // slot).astype(np.int64)
        within = local - active * slot
        phase_state = np.where(within < tm.green, GREEN, np.where(within < tm.green + tm.yellow, YELLOW, RED))
        self._light_state = np.where(active == g.light_phase, phase_state, RED)
        to_change = (
            np.where(
                within < tm.green,
                tm.green,
                np.where(within < tm.green + tm.yellow, tm.green + tm.yellow, slot),
            )
            - within
        )
        self._lights_valid_until = self.elapsed_seconds + float(to_change.min()) - 1e-9

    def _locate_free(self) -> None:
        """Lane, distance along it, road height and on-lane flag of each hero (one or a few)."""
        f, g, t = self._free, self.town.lanes, self._tables.network
        for r in range(len(f.x)):
            p = (f.x[r], f.y[r], f.z[r])
            lane, s, _ = g.locate(p, f.yaw[r])
            f.lane[r], f.s[r] = lane, s
            _, _, f.z[r], f.lane_yaw[r] = lane_pose(
                lane, s, t.lane_start, t.lane_count, g.lane_ds, g.lane_length, g.points, g.yaw
            )
            nearest, dist = g.nearest(p)
            f.on_lane[r] = float(dist <= g.lane_width[g.point_lane[nearest]] / 2 + ON_LANE_TOLERANCE)

    def _overlaps(self, xyz: np.ndarray, yaw: float, half: np.ndarray) -> bool:
        pos, yaws, halves = self._all_boxes()
        if not len(pos):
            return False
        pos = np.vstack([pos, xyz])
        yaws = np.append(yaws, yaw)
        halves = np.vstack([halves, half])
        i, j = overlapping_pairs(pos, yaws, halves)
        return bool((j == len(pos) - 1).any())

    def _all_boxes(self):
        f = self._free
        pos = np.concatenate([np.column_stack([f.x, f.y, f.z]), self.traffic.xyz])
        return pos, np.concatenate([f.yaw, self.traffic.yaw]), np.concatenate([f.half, self._npc_half])

    def _detect_collisions(self) -> None:
        pos, yaws, halves = self._all_boxes()
        i, j = overlapping_pairs(pos, yaws, halves)
        actors = self._free_actors + self._npc_actors
        self.collisions = [(actors[a].id, actors[b].id) for a, b in zip(i.tolist(), j.tolist(), strict=True)]
        if self._crowd is not None and self._crowd.count:
            # Walkers move once the vehicles have (checking for them where they now are), in the same
            # compiled call that finds vehicle-walker contacts.
            speeds = np.concatenate([np.abs(self._free.v), self.traffic.v])
            wi, wj = self._crowd.step(self.delta_seconds, pos, yaws, halves, speeds)
            self._report_walker_collisions(wi, wj, pos, speeds, actors)
        if not self.collisions or not self._sensors:
            return
        speeds = np.concatenate([self._free.v, self.traffic.v])
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            rel = abs(speeds[a] - speeds[b])
            for me, other in ((a, b), (b, a)):
                for sensor in self._sensors:
                    if sensor.type_id == "sensor.other.collision" and sensor.parent is actors[me]:
                        d = pos[me] - pos[other]
                        n = d / max(np.linalg.norm(d), 1e-6) * rel * 1500.0  # impulse ~ m * dv
                        sensor._emit(
                            CollisionEvent(
                                self.frame,
                                self.elapsed_seconds,
                                actors[me],
                                actors[other],
                                carla.Vector3D(*map(float, n)),
                                actors[me].get_transform(),
                            )
                        )

    def _report_walker_collisions(self, i, j, pos, speeds, vehicles) -> None:
        """Vehicle-walker contacts: in self.collisions (vehicle id, walker id); a vehicle's collision
        sensor gets an event whose other_actor is the walker."""
        c = self._crowd
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            vehicle, walker = vehicles[a], self._walker_actors[b]
            self.collisions.append((vehicle.id, walker.id))
            for sensor in self._sensors:
                if sensor.type_id == "sensor.other.collision" and sensor.parent is vehicle:
                    d = pos[a] - c.state.xyz[b]
                    n = d / max(np.linalg.norm(d), 1e-6) * abs(speeds[a]) * 80.0  # impulse ~ m * dv
                    sensor._emit(
                        CollisionEvent(
                            self.frame,
                            self.elapsed_seconds,
                            vehicle,
                            walker,
                            carla.Vector3D(*map(float, n)),
                            vehicle.get_transform(),
                        )
                    )

    def _detect_lane_invasions(self) -> None:
        """A bounding-box corner over a painted line of the lane under the car's centre, as CARLA's
        sensor tests the box corners. Corners beyond the lane's ends are not tested: there the paint
        belongs to the next lane or stops at a junction (a car leaving a turn is still angled). Inside
        a junction nothing is: LibCarla's LaneCrossingCalculator returns no marking when either end
        of a corner's move is on a junction road, whatever paint the OpenDRIVE gives its lanes (real
        towns paint them), so a car still over a line as it leaves a junction has crossed none."""
        f, g = self._free, self.town.lanes
        for r, actor in enumerate(self._free_actors):
            lane = int(f.lane[r])
            if g.lane_junction[lane] >= 0:
                f.marking_overlap[r] = 1.0
                continue
            box = np.array([f.x[r], f.y[r], f.yaw[r], f.half[r, 0], f.half[r, 1]])
            right, left = painted_markings(
                box, lane, f.s[r], g.lane_start, g.lane_count, g.lane_ds, g.lane_length, g.lane_width,
                g.points, g.yaw, g.mark_left, g.mark_right, UNMARKED,
            )  # fmt: skip
            crossed = [LaneMarking(carla.LaneMarkingType.values[int(m)]) for m in (right, left) if m >= 0]
            overlapping = float(bool(crossed))
            if overlapping and not f.marking_overlap[r]:
                event = LaneInvasionEvent(
                    self.frame, self.elapsed_seconds, actor, crossed, actor.get_transform()
                )
                for sensor in self._sensors:
                    if sensor.type_id == "sensor.other.lane_invasion" and sensor.parent is actor:
                        sensor._emit(event)
            f.marking_overlap[r] = overlapping

    def __repr__(self) -> str:
        return (
            f"EmbeddedWorld(town={self.town.name}, frame={self.frame}, "
            f"vehicles={len(self._free_actors) + len(self._npc_actors)}, walkers={len(self._walker_actors)})"
        )
