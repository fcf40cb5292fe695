"""Pedestrians: where they walk (sidewalks and crossings of real and generated towns), how they walk
(CARLA's walker AI), the CARLA API they answer to, traffic yielding to them, collisions, the BEV."""

import dataclasses

import carla
import numpy as np
import pytest
from scipy.sparse.csgraph import dijkstra

from carla_env.config import SimulatorConfig
from carla_env.driving_state import DrivingStateTracker
from carla_env.embedded import EmbeddedWorld
from carla_env.embedded.core import EmbeddedCore
from carla_env.embedded.kernels import IDLE
from carla_env.embedded.walkers import WalkerCrowd
from carla_env.maps import BUILTIN_TOWNS, build_lane_graph, generate_town, load_town
from carla_env.maps.route import plan_route
from carla_env.maps.sidewalks import CROSSING, ROAD, SIDEWALK, WalkGraph, build_walk_graph
from carla_env.metrics import DrivingMetrics
from carla_env.sensors import BirdviewRenderer, BirdviewSpec, scene_from_world
from tests.conftest import real_town_path

TOWN = "GridTown03"


def core_with(walkers: int, seed_town: str = TOWN, vehicles: int = 10, cross: float = 0.0) -> EmbeddedCore:
    return EmbeddedCore(
        SimulatorConfig(
            backend="embedded",
            town=seed_town,
            traffic={"vehicles": vehicles},
            carla={"walkers": walkers, "walker_cross_factor": cross},
        )
    )


def spawn_walker(world, location: carla.Location, controller: bool = True):
    lib = world.get_blueprint_library()
    walker = world.spawn_actor(lib.find("walker.pedestrian.0001"), carla.Transform(location))
    brain = world.spawn_actor(lib.find("controller.ai.walker"), carla.Transform(), attach_to=walker)
    return walker, brain


# ------------------------------------------------------------------------------- where they walk
@pytest.mark.parametrize("name", ["Town01", "Town02", "Town04", "Town10HD"])
def test_real_towns_give_connected_sidewalks_and_crossings(name):
    town = load_town(real_town_path(name))
    graph = build_walk_graph(town.map, town.xodr, town.lanes)
    kinds = np.bincount(graph.edge_kind, minlength=3)
    assert kinds[SIDEWALK] > 500 and kinds[CROSSING] >= 10 and kinds[ROAD] >= 10
    comp = graph.components(roads=False)
    assert np.bincount(comp).max() >= 0.8 * graph.num_nodes  # one town-wide network, not islands
    crosswalks = len(town.map.get_crosswalks())
    if name in ("Town04", "Town10HD"):  # crossings from the map's crosswalk objects
        assert crosswalks and kinds[CROSSING] >= 0.5 * crosswalks / 5
    for node in np.linspace(0, graph.num_nodes - 1, 50).astype(int):
        x, y, z = graph.node_xyz[node]
        wp = town.map.get_waypoint(
            carla.Location(x, y, z), project_to_road=False, lane_type=carla.LaneType.Sidewalk
        )
        assert wp is not None  # every node is on an OpenDRIVE sidewalk lane
    # Each crossing spans driving lanes, and traffic knows which.
    spans = np.diff(graph.cross_ptr)
    assert (spans[graph.edge_kind != SIDEWALK] > 0).all() and (spans[graph.edge_kind == SIDEWALK] == 0).all()


def test_generated_towns_carry_sidewalks_and_crosswalks_in_their_opendrive_and_the_same_driving_lanes():
    spec = BUILTIN_TOWNS["GridTown01"]
    xodr = generate_town(spec, "GridTown01")
    bare = generate_town(dataclasses.replace(spec, sidewalk_width=0.0), "GridTown01")
    assert 'type="sidewalk"' in xodr and 'type="crosswalk"' in xodr and 'type="sidewalk"' not in bare
    cmap = carla.Map("GridTown01", xodr)  # what a CARLA server gets through generate_opendrive_world
    polygons = len(cmap.get_crosswalks()) // 5  # closed quads
    assert polygons == xodr.count('type="crosswalk"') > 20
    ours, before = (
        build_lane_graph(cmap, xodr, use_cache=False),
        build_lane_graph(carla.Map("GridTown01", bare), bare, use_cache=False),
    )
    for field in dataclasses.fields(ours):
        if field.name != "xodr_hash":
            assert np.array_equal(getattr(ours, field.name), getattr(before, field.name)), field.name
    graph = build_walk_graph(cmap, xodr, ours)
    assert np.bincount(graph.edge_kind, minlength=3)[CROSSING] == polygons  # every crosswalk is walkable
    assert graph.components(roads=False).max() == 0  # corners join the arms' sidewalks: one network
    # A crosswalk lies clear of where cars wait at the stop line (>= 2.5 m before the junction).
    town = load_town("GridTown01")
    g = town.lanes
    for e in np.flatnonzero(graph.edge_kind == CROSSING):
        for k in range(graph.cross_ptr[e], graph.cross_ptr[e + 1]):
            lane, s = graph.cross_lane[k], graph.cross_s[k]
            assert min(s, g.lane_length[lane] - s) <= 2.5


def _grid_walk_graph() -> WalkGraph:
    """Two islands of nodes on a 1 m lattice (one node doubled), so that many points are equally near
    several nodes, bit for bit."""
    xy = [(x, y) for x in range(4) for y in range(3)] + [(1, 1)] + [(x + 10, 0) for x in range(3)]
    along_y, along_x = [k for k in range(12) if k % 3 != 2], list(range(9))
    a = np.array(along_y + along_x + [4, 13, 14])
    b = np.array([k + 1 for k in along_y] + [k + 3 for k in along_x] + [12, 14, 15])
    empty = np.zeros(0, np.int64)
    return WalkGraph(
        node_xyz=np.array([(x, y, 0.0) for x, y in xy], float),
        node_width=np.ones(len(xy)),
        edge_a=a,
        edge_b=b,
        edge_kind=np.full(len(a), SIDEWALK),
        adj_ptr=empty,
        adj_node=empty,
        adj_edge=empty,
        cross_ptr=empty,
        cross_lane=empty,
        cross_s=np.zeros(0),
        cross_at=np.zeros(0),
    )


def test_nearest_node_is_the_brute_force_argmin_ties_included():
    lattice, town = _grid_walk_graph(), load_town(TOWN)
    sidewalks = build_walk_graph(town.map, town.xodr, town.lanes)
    rng = np.random.default_rng(0)
    for graph in (lattice, sidewalks):
        xyz = graph.node_xyz
        lo, hi = xyz.min(axis=0) - 20, xyz.max(axis=0) + 20
        points = np.concatenate(
            [
                xyz,  # on a node (the doubled one: the lower index)
                xyz + rng.normal(0, 0.7, xyz.shape),  # beside one
                rng.uniform(lo, hi, (300, 3)),  # anywhere: also farther than the first look
                (xyz[graph.edge_a] + xyz[graph.edge_b]) / 2,  # halfway along an edge
                np.floor(rng.uniform(lo, hi, (300, 3))) + 0.5,  # lattice cell centres: 4-way ties
            ]
        )
        for roads in (False, True):
            comp = graph.components(roads)
            for p in points:
                assert graph.nearest_node(p) == np.linalg.norm(xyz - p, axis=1).argmin()
                start = int(rng.integers(graph.num_nodes))
                reachable = np.flatnonzero(comp == comp[start])
                expected = reachable[np.linalg.norm(xyz[reachable] - p, axis=1).argmin()]
                assert graph.nearest_node(p, reachable_from=start, roads=roads) == expected
    assert lattice.nearest_node((1.0, 1.0, 0.0)) == 4 and lattice.nearest_node((10.5, 0.0, 0.0)) == 13
    assert lattice.nearest_node((10.0, 0.0, 0.0), reachable_from=0) == 9  # the nearest on its island


@pytest.mark.parametrize("name", [TOWN, "Town02"])
def test_next_hops_match_an_undirected_dijkstra_for_every_goal(name):
    town = load_town(real_town_path(name) if name.startswith("Town") else name)
    graph = build_walk_graph(town.map, town.xodr, town.lanes)
    for roads in (False, True):
        _, pred = dijkstra(graph.csgraph(roads), directed=False, return_predecessors=True)
        hops = np.array([graph.next_hops(goal, roads) for goal in range(graph.num_nodes)])
        assert np.array_equal(hops, np.where(pred < 0, -1, pred))


def test_crowd_rows_keep_their_order_through_adds_and_removes_and_a_reused_row_starts_blank():
    town = load_town(TOWN)
    graph = build_walk_graph(town.map, town.xodr, town.lanes)
    crowd = WalkerCrowd(graph, np.random.default_rng(0))
    for k in range(40):
        row = crowd.add(graph.node_xyz[7 * k] + (0.1, 0.0, 0.0), (0.2, 0.2, 0.9 + k / 100))
        crowd.start(row)
        crowd.go_to(row, graph.node_xyz[7 * k + 100])
        crowd.state.max_speed[row] = 1.0 + k / 100
    assert crowd.count == 40 and (crowd.state.goal >= 0).all() and (crowd.next_hop >= 0).any(axis=1).all()
    expected = [np.copy(a) for a in (*crowd.state, crowd.half, crowd.next_hop)]
    for row in (5, 0, 37, 20):
        crowd.remove(row)
        expected = [np.delete(a, row, axis=0) for a in expected]
    for got, want in zip((*crowd.state, crowd.half, crowd.next_hop), expected, strict=True):
        assert np.array_equal(got, want)
    row = crowd.add(graph.node_xyz[3], (0.3, 0.3, 1.0))  # into buffer rows the removed walkers held
    assert row == 36 and crowd.count == 37
    s = crowd.state
    assert (s.goal[row], s.edge[row], s.mode[row], s.v[row], s.max_speed[row]) == (-1, -1, IDLE, 0.0, 1.4)
    assert s.node_from[row] == s.node_to[row] == 3 and (crowd.next_hop[row] == -1).all()
    assert np.array_equal(crowd.half[row], (0.3, 0.3, 1.0))
    crowd.step(0.1, np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), np.zeros(0))
    assert (crowd.state.v[:36] > 0).any()  # the kernel walks the rows it is shown


# ------------------------------------------------------------------------------- the CARLA API
def test_walkers_config_key_spawns_walkers_with_ai_controllers_through_the_carla_api():
    core = core_with(12)
    core.reset(seed=3)
    world = core.world
    walkers = world.get_actors().filter("walker.*")
    assert len(walkers) == 12 and all(w.type_id.startswith("walker.pedestrian.") for w in walkers)
    assert len(world.get_actors().filter("controller.ai.walker")) == 12
    assert (
        world.get_blueprint_library().find("walker.pedestrian.0001").get_attribute("speed").recommended_values
    )
    for _ in range(40):
        core.tick(None)
    speeds = [np.hypot(w.get_velocity().x, w.get_velocity().y) for w in walkers]
    assert sum(s > 0.9 for s in speeds) >= 8 and max(speeds) <= 1.6 + 1e-6  # 1.0-1.6 m/s, or waiting
    w = walkers[0]
    box = w.bounding_box
    assert 0.1 < box.extent.x < 0.5 and 0.6 < box.extent.z < 1.2
    assert isinstance(w.get_transform(), carla.Transform) and w.get_location().z > 0.5  # the body's centre
    core.close()


def test_walkers_zero_leaves_the_world_as_it_was():
    a, b = (
        core_with(0),
        EmbeddedCore(SimulatorConfig(backend="embedded", town=TOWN, traffic={"vehicles": 10})),
    )
    for core in (a, b):
        core.reset(seed=4)
        for _ in range(100):
            core.tick(carla.VehicleControl(throttle=0.5))
    assert not len(a.world.get_actors().filter("walker.*"))
    assert np.array_equal(a.world.traffic.xyz, b.world.traffic.xyz)


def test_same_seed_same_walks_and_another_seed_other_walks():
    def walk(seed):
        core = core_with(20, cross=0.5)
        core.reset(seed=seed)
        for _ in range(300):
            core.tick(None)
        return np.array(
            [[w.get_location().x, w.get_location().y] for w in core.world.get_actors().filter("walker.*")]
        )

    a, b, c = walk(1), walk(1), walk(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_go_to_location_walks_along_sidewalks_to_the_destination_then_stop_stands_still():
    town = load_town(TOWN)
    world = EmbeddedWorld(town, seed=0)
    start, goal = world.get_random_location_from_navigation(), world.get_random_location_from_navigation()
    walker, brain = spawn_walker(world, start)
    brain.start()
    brain.set_max_speed(1.5)
    brain.go_to_location(goal)
    closest = np.inf
    for _ in range(int(2 * start.distance(goal) / 1.5 / 0.05) + 4000):
        world.tick()
        loc = walker.get_location()
        closest = min(closest, np.hypot(loc.x - goal.x, loc.y - goal.y))
        speed = np.hypot(walker.get_velocity().x, walker.get_velocity().y)
        assert speed <= 1.5 + 1e-9
        if closest < 0.5:
            break
    assert closest < 0.5  # it got there (and, as CARLA's, then walks on to a new random destination)
    brain.stop()
    before = walker.get_location()
    for _ in range(20):
        world.tick()
    assert walker.get_location().distance(before) == 0.0


def test_a_walker_spawns_where_asked_even_on_the_road_and_walks_to_the_sidewalk_when_sent():
    """Scenarios put a pedestrian on the road ahead of the hero (CARLA spawns it there; only a vehicle
    in the way refuses the spawn)."""
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    lib = world.get_blueprint_library()
    spawn = world.town.spawn_points(seed=1)[0]
    hero = world.spawn_actor(lib.find("vehicle.tesla.model3"), spawn)
    assert (
        world.try_spawn_actor(lib.find("walker.pedestrian.0001"), carla.Transform(hero.get_location()))
        is None
    )
    ahead = spawn.location + 15.0 * spawn.get_forward_vector()
    walker, brain = spawn_walker(world, ahead)
    asked = carla.Location(ahead.x, ahead.y, 0.0)
    assert walker.get_location().distance(asked) == pytest.approx(walker.bounding_box.extent.z)  # body centre
    world.tick()
    brain.start()
    brain.go_to_location(world.get_random_location_from_navigation())
    for _ in range(100):  # 5 s: off the lane, then along an edge of the walk graph
        world.tick()
    assert world._crowd.state.edge[walker._row] >= 0 and walker.get_location().distance(asked) > 2.0


def test_a_walker_steered_off_the_sidewalk_walks_back_when_started_without_a_jump():
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    walker, brain = spawn_walker(world, world.get_random_location_from_navigation())
    walker.apply_control(carla.WalkerControl(direction=carla.Vector3D(1.0, 1.0, 0.0), speed=2.0))
    for _ in range(60):  # 3 s: ~6 m off its spot
        world.tick()
    before = walker.get_location()
    brain.start()
    brain.go_to_location(world.get_random_location_from_navigation())
    brain.set_max_speed(1.5)
    steps = []
    for _ in range(200):
        world.tick()
        steps.append(walker.get_location().distance(before))
        before = walker.get_location()
    assert max(steps) <= 1.5 * world.delta_seconds + 1e-3 and sum(steps) > 10.0  # float32 locations


def test_walker_control_moves_a_walker_without_a_controller():
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    lib = world.get_blueprint_library()
    walker = world.spawn_actor(
        lib.find("walker.pedestrian.0002"), carla.Transform(world.get_random_location_from_navigation())
    )
    before = walker.get_location()
    walker.apply_control(carla.WalkerControl(direction=carla.Vector3D(0.0, 1.0, 0.0), speed=2.0))
    for _ in range(20):  # 1 s
        world.tick()
    after = walker.get_location()
    assert after.y - before.y == pytest.approx(2.0) and after.x == pytest.approx(before.x)
    assert walker.get_transform().rotation.yaw == pytest.approx(90.0)
    with pytest.raises(TypeError, match="WalkerControl"):
        walker.apply_control(carla.VehicleControl())


def test_destroying_walkers_and_controllers_keeps_the_rest_walking():
    core = core_with(6)
    core.reset(seed=0)
    world = core.world
    walkers = list(world.get_actors().filter("walker.*"))
    controllers = list(world.get_actors().filter("controller.ai.walker"))
    controllers[0].stop()
    assert controllers[0].destroy() and walkers[0].destroy()
    assert walkers[2].destroy()  # its controller goes with it
    assert len(world.get_actors().filter("walker.*")) == 4
    assert len(world.get_actors().filter("controller.ai.walker")) == 4
    before = {w.id: w.get_location() for w in world.get_actors().filter("walker.*")}
    for _ in range(40):
        core.tick(None)
    moved = [w.get_location().distance(before[w.id]) > 1.0 for w in world.get_actors().filter("walker.*")]
    assert sum(moved) >= 3


def test_a_destroyed_walker_raises_instead_of_answering_for_the_walker_now_in_its_row():
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    first, second = world.spawn_walkers(2, seed=1)
    controller = world.get_actors().filter("controller.ai.walker")[0]
    second_before = second.get_location()
    assert first.destroy()
    for call in (
        first.get_location,
        first.get_velocity,
        lambda: first.apply_control(carla.WalkerControl(speed=1.0)),
        controller.start,
        lambda: controller.set_max_speed(1.0),
    ):
        with pytest.raises(RuntimeError, match="destroyed actor"):
            call()
    world.tick()
    assert second.get_location().distance(second_before) > 0.0  # still walking under its own controller
    assert second.get_control().speed == 0.0


# ------------------------------------------------------------------------------- traffic and collisions
def test_traffic_stops_for_a_walker_in_its_lane():
    town = load_town(TOWN)
    g = town.lanes
    lane = int(np.flatnonzero(~g.is_junction & g.lane_main & (g.lane_length > 50))[0])
    world = EmbeddedWorld(town, seed=0)
    (npc,) = world.spawn_npcs_at(np.array([lane]), np.array([2.0]), ["vehicle.tesla.model3"])
    pos, _ = g.interpolate(np.array([lane]), np.array([40.0]))
    walker = world.spawn_actor(
        world.get_blueprint_library().find("walker.pedestrian.0003"),
        carla.Transform(carla.Location(*map(float, pos[0]))),
    )
    walker.apply_control(carla.WalkerControl(direction=carla.Vector3D(1.0, 0.0, 0.0), speed=0.0))
    world._crowd.state.xyz[0] = pos[0]  # stand in the lane, 38 m ahead of the car
    for _ in range(400):
        world.tick()
        assert (npc.id, walker.id) not in world.collisions
    assert world.traffic.v[0] < 0.1 and npc.get_location().distance(walker.get_location()) < 10.0


def test_the_hero_hitting_a_walker_is_a_collision_with_the_walker_counted_apart():
    town = load_town(TOWN)
    world = EmbeddedWorld(town, seed=0)
    lib = world.get_blueprint_library()
    spot = town.spawn_points(seed=0)[0]
    hero = world.spawn_actor(lib.find("vehicle.tesla.model3"), spot)
    sensor = world.spawn_actor(lib.find("sensor.other.collision"), carla.Transform(), attach_to=hero)
    events = []
    sensor.listen(events.append)
    walker = world.spawn_actor(lib.find("walker.pedestrian.0004"), carla.Transform())
    walker.apply_control(carla.WalkerControl(speed=0.0))
    yaw = np.radians(spot.rotation.yaw)
    world._crowd.state.xyz[0] = (spot.location.x + 15 * np.cos(yaw), spot.location.y + 15 * np.sin(yaw), 0.0)
    for _ in range(120):
        hero.apply_control(carla.VehicleControl(throttle=0.7))
        world.tick()
        if events:
            break
    assert events and events[0].other_actor is walker and events[0].actor is hero
    assert events[0].other_actor.type_id.startswith("walker.pedestrian")

    class Core:  # what DrivingStateTracker reads of a core
        pass

    core = Core()
    core.hero, core.on_driving_lane = hero, lambda actor: True
    lane, s, _ = town.lanes.locate((spot.location.x, spot.location.y, 0.0), yaw)
    route = plan_route(town.lanes, (lane, s), (lane, min(s + 30, town.lanes.lane_length[lane] - 1)))
    sensors = {"collision": type("C", (), {"type": "sensor.other.collision"})()}
    tracker = DrivingStateTracker(route, sensors, hero)
    state = tracker.step(core, {"collision": (world.frame, events[:1])})
    metrics = DrivingMetrics(route_length=30.0)
    metrics.update(0.05, state)
    summary = metrics.summary()
    assert state.pedestrian_collisions == 1 and summary["pedestrian_collisions"] == 1.0
    assert summary["collisions"] == 1.0 and summary["pedestrian_collisions_per_km"] > 0


# ------------------------------------------------------------------------------- the BEV
def test_same_walker_pixels_and_vehicle_velocities_from_the_carla_api_and_from_the_embedded_arrays():
    core = core_with(60, vehicles=30)
    core.reset(seed=2)
    world, hero = core.world, core.hero
    spec = BirdviewSpec(channels=(*BirdviewSpec().channels, "speed"))
    via_api, via_arrays = BirdviewRenderer(core.town.lanes, spec), BirdviewRenderer(core.town.lanes, spec)
    walker_px = moving = 0
    for _ in range(200):
        core.tick(carla.VehicleControl(throttle=0.3))
        a = via_api(scene_from_world(world, hero, core.town.lanes))
        ours, theirs = world.birdview_scene(hero), scene_from_world(world, hero, core.town.lanes)
        assert np.array_equal(ours.walkers, theirs.walkers) and len(ours.walkers) == 60
        assert np.allclose(ours.vehicle_velocities, theirs.vehicle_velocities, atol=1e-4)
        moving += int((np.hypot(*ours.vehicle_velocities.T) > 1.0).sum())
        b = via_arrays(ours)
        assert np.array_equal(a, b)
        walker_px += int(sum(a[k].sum() for name, k in via_api.index.items() if name.startswith("walkers")))
    assert walker_px > 0 and moving > 0  # walkers were in view, vehicles drove


# ------------------------------------------------------------------------------- the soak
@pytest.mark.slow
def test_soak_100_walkers_50_vehicles_10000_ticks_walkers_stay_on_sidewalks_and_crossings_unhit():
    core = core_with(100, seed_town="GridTown01", vehicles=50, cross=0.3)
    core.reset(seed=0)
    world, cmap = core.world, core.town.map
    crowd, graph = world._crowd, world._crowd.graph
    walkers = {w.id for w in world.get_actors().filter("walker.*")}
    npcs = {v.id for v in world.get_actors().filter("vehicle.*")} - {core.hero.id}
    assert len(walkers) == 100 and len(npcs) == 50
    crossed = off = 0
    for tick in range(10_000):
        core.tick(None)  # the hero stands; NPCs and walkers live around it
        assert not [(a, b) for a, b in world.collisions if a in npcs and b in walkers], tick
        if tick % 10:
            continue
        for row in range(crowd.count):
            e = crowd.state.edge[row]
            x, y, z = crowd.state.xyz[row]
            if e >= 0 and graph.edge_kind[e] != SIDEWALK:
                crossed += 1
                a, b = graph.node_xyz[graph.edge_a[e]], graph.node_xyz[graph.edge_b[e]]
                u = (b - a)[:2]
                t = np.clip(np.dot((x - a[0], y - a[1]), u) / np.dot(u, u), 0, 1)
                off += np.hypot(*(a[:2] + t * u - (x, y))) > 1e-6  # on the crossing's line
            else:
                loc = carla.Location(float(x), float(y), float(z))
                off += (
                    cmap.get_waypoint(loc, project_to_road=False, lane_type=carla.LaneType.Sidewalk) is None
                )
    assert off == 0 and crossed > 1000
    assert world.traffic.v.mean() > 0.5  # traffic still flows


def test_an_experiment_config_written_for_carla_gets_its_walkers_on_the_embedded_backend():
    """The PPO experiment (its BEV has a walkers channel) with `simulator.carla.walkers`, run embedded."""
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv

    env = CarlaEnv(
        load_config(
            "experiments/ppo/config.yaml",
            {"simulator": {"backend": "embedded", "town": TOWN, "carla": {"walkers": 40}}},
        )
    )
    try:
        env.reset(seed=1)
        assert len(env.core.world.get_actors().filter("walker.*")) == 40
        for _ in range(20):
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        assert "pedestrian_collisions_per_km" in info
    finally:
        env.close()


def test_the_demo_drives_among_walkers():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "carla_env.demo", "--town", TOWN, "--seconds", "2", "--walkers", "15"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "; 15 walkers" in proc.stdout


def widest_crossing(world):
    """(walk graph, edge, its end a, its end b) of the crossing over the most driving lanes."""
    graph = world._walk_graph()
    crossings = np.flatnonzero(graph.edge_kind == CROSSING)
    e = int(crossings[np.argmax(graph.cross_ptr[crossings + 1] - graph.cross_ptr[crossings])])
    return graph, e, graph.node_xyz[graph.edge_a[e]], graph.node_xyz[graph.edge_b[e]]


def a_car_across_a_walkers_crossing():
    """A world where a walker, 1 m onto the widest crossing, has a car stopping across its way 2.5 m
    ahead (its side ~1.4 m from the walker). Returns (world, walker, car, kerb a, unit way, car centre)."""
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    _, _, a, b = widest_crossing(world)
    walker, brain = spawn_walker(world, carla.Location(*map(float, a)))
    brain.start()
    brain.go_to_location(carla.Location(*map(float, b)))
    way = (b - a)[:2] / np.linalg.norm((b - a)[:2])
    for _ in range(400):  # until it is 1 m onto the crossing
        world.tick()
        loc = walker.get_location()
        if np.dot((loc.x - a[0], loc.y - a[1]), way) > 1.0:
            break
    assert np.dot((loc.x - a[0], loc.y - a[1]), way) > 1.0
    ahead = np.array([loc.x, loc.y]) + 2.5 * way
    car_yaw = float(np.degrees(np.arctan2(way[0], -way[1])))  # across the walker's way
    car = world.spawn_actor(
        world.get_blueprint_library().find("vehicle.tesla.model3"),
        carla.Transform(carla.Location(float(ahead[0]), float(ahead[1]), 0.5), carla.Rotation(yaw=car_yaw)),
    )
    return world, walker, car, a, way, ahead


def test_a_walker_stands_clear_of_a_car_stopped_across_its_crossing_then_walks_on():
    """CARLA's walker crowd holds every vehicle as an obstacle (its box grown by 0.8 m); a walker
    half-way over a crossing does not walk into a car that stopped on it, it waits, then goes on."""
    world, walker, car, a, way, ahead = a_car_across_a_walkers_crossing()
    for _ in range(100):  # 5 s
        car.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
        assert (car.id, walker.id) not in world.collisions
    held = walker.get_location()
    gap = np.dot((ahead[0] - held.x, ahead[1] - held.y), way) - car.bounding_box.extent.y
    assert 0.7 < gap < 1.2  # it stands at the clearance, on the crossing, waiting
    car.destroy()
    for _ in range(200):
        world.tick()
    loc = walker.get_location()
    assert np.dot((loc.x - a[0], loc.y - a[1]), way) > np.dot((held.x - a[0], held.y - a[1]), way) + 3.0


def test_a_walker_held_on_a_crossing_by_a_car_that_stays_turns_back_to_its_kerb():
    """A car that stops across a crossing for good (the hero waiting for the walker it blocks) would hold
    a walker in the road for ever; as CARLA re-routes a walker stuck 4-8 s wherever it is, the walker
    turns back after CROSSING_UNBLOCK_TIME, still unhit, and leaves the road."""
    from carla_env.embedded.kernels import CROSSING_UNBLOCK_TIME

    world, walker, car, a, way, _ = a_car_across_a_walkers_crossing()
    along = lambda loc: float(np.dot((loc.x - a[0], loc.y - a[1]), way))  # noqa: E731
    ticks = int(round(1.0 / world.delta_seconds))
    positions = []
    for _ in range(int(CROSSING_UNBLOCK_TIME + 6) * ticks):
        car.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
        assert not [p for p in world.collisions if walker.id in p]
        positions.append(along(walker.get_location()))
    held = positions[int(CROSSING_UNBLOCK_TIME - 1) * ticks]
    assert max(positions[: int(CROSSING_UNBLOCK_TIME - 1) * ticks]) - held < 0.05  # it waited there
    assert positions[-1] < 0.5 < held  # then walked back off the crossing


def test_a_walker_held_at_its_kerb_by_an_oblique_car_takes_another_route():
    """A car standing at an angle beside a crossing can leave the kerb check clear while its clearance
    holds the walker's first step; the walker must not check, step, wait and turn back there for ever:
    held at its kerb, it takes a new route and walks off."""
    world = EmbeddedWorld(load_town(TOWN), seed=0)
    _, _, a, b = widest_crossing(world)
    way = (b - a)[:2] / np.linalg.norm((b - a)[:2])
    at = a[:2] + 0.75 * way + 3.5 * np.array([-way[1], way[0]])  # a pose found to do it on this town
    car = world.spawn_actor(
        world.get_blueprint_library().find("vehicle.tesla.model3"),
        carla.Transform(carla.Location(float(at[0]), float(at[1]), 0.5), carla.Rotation(yaw=50.0)),
    )
    walker, brain = spawn_walker(world, carla.Location(*map(float, a)))
    brain.start()
    brain.go_to_location(carla.Location(*map(float, b)))
    for _ in range(int(30 / world.delta_seconds)):
        car.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
        assert not [p for p in world.collisions if walker.id in p]
    loc = walker.get_location()
    assert np.hypot(loc.x - a[0], loc.y - a[1]) > 5.0  # it went elsewhere


@pytest.mark.parametrize("rear_gap", [0.5, 0.7, 0.9])
def test_a_car_standing_just_past_a_crossing_never_holds_a_walker_in_the_road(rear_gap):
    """The kerb check keeps a walker off a crossing while a car's box is within the clearance of it;
    otherwise a walker stepping on behind the bumper would stand in the road as long as the car does."""
    town = load_town(TOWN)
    world = EmbeddedWorld(town, seed=0)
    graph, e, a, b = widest_crossing(world)
    k = min(range(graph.cross_ptr[e], graph.cross_ptr[e + 1]), key=lambda k: graph.cross_s[k])
    lane, s = int(graph.cross_lane[k]), float(graph.cross_s[k])
    bp = world.get_blueprint_library().find("vehicle.tesla.model3")
    half_length = 2.396  # the model3's box, as the embedded blueprints give it
    pos, yaw = town.lanes.interpolate(np.array([lane]), np.array([s + half_length + rear_gap]))
    car = world.spawn_actor(
        bp,
        carla.Transform(carla.Location(*map(float, pos[0])), carla.Rotation(yaw=float(np.degrees(yaw[0])))),
    )
    assert car.bounding_box.extent.x == pytest.approx(half_length, abs=1e-3)
    walker, brain = spawn_walker(world, carla.Location(*map(float, a)))
    brain.start()
    brain.go_to_location(carla.Location(*map(float, b)))
    way = (b - a)[:2] / np.linalg.norm((b - a)[:2])
    width = np.linalg.norm((b - a)[:2])
    on_road = 0
    for _ in range(600):  # 30 s
        car.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
        assert not [p for p in world.collisions if walker.id in p]
        loc = walker.get_location()
        along = np.dot((loc.x - a[0], loc.y - a[1]), way)
        standing = np.hypot(walker.get_velocity().x, walker.get_velocity().y) < 0.05
        on_road = on_road + 1 if standing and 0.5 < along < width - 0.5 else 0
        assert on_road < 40  # never 2 s standing on the crossing
