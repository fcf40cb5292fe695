"""The embedded simulator on real CARLA towns, where their OpenDRIVE differs from the generated towns':
junction lanes painted in the map are no lane invasion (as LibCarla's LaneCrossingCalculator)."""

import carla
import numpy as np
import pytest

from carla_env.embedded import EmbeddedWorld
from carla_env.embedded.world import UNMARKED
from carla_env.maps import load_town
from tests.conftest import real_town_path


def events_with_hero_right_of_centre(town, lane: int, s: float, right: float) -> list:
    """Lane-invasion events of one tick with the hero `right` metres right of a lane's centre line."""
    world = EmbeddedWorld(town, seed=0)
    (x, y, z), yaw = (v[0] for v in town.lanes.interpolate(np.array([lane]), np.array([s])))
    at = carla.Transform(
        carla.Location(float(x - right * np.sin(yaw)), float(y + right * np.cos(yaw)), float(z)),
        carla.Rotation(yaw=float(np.degrees(yaw))),
    )
    hero = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), at)
    assert world._vehicle_lane(hero)[0] == lane
    events = []
    sensor = world.get_blueprint_library().find("sensor.other.lane_invasion")
    world.spawn_actor(sensor, carla.Transform(), attach_to=hero).listen(events.append)
    hero.apply_control(carla.VehicleControl(brake=1.0))
    world.tick()
    return events


def painted_lanes(g, junction: bool) -> list[int]:
    """Lanes over 10 m whose right edge is painted all along, in junctions or outside them."""
    return [
        int(k)
        for k in np.flatnonzero((g.is_junction == junction) & (g.lane_length > 10) & (g.lane_right < 0))
        if (g.mark_right[g.lane_start[k] : g.lane_start[k] + g.lane_count[k]] != UNMARKED).all()
    ]


def test_a_painted_junction_lane_is_not_invaded_but_a_road_lane_is():
    town = load_town(real_town_path("Town10HD"))
    g = town.lanes
    in_junction, on_road = painted_lanes(g, True), painted_lanes(g, False)
    assert in_junction, "Town10HD paints its junction lanes: without one this shows nothing"
    for lane in in_junction[:5]:  # a wheel over the painted edge: CARLA reports nothing in a junction
        assert events_with_hero_right_of_centre(town, lane, 5.0, 0.4 * g.lane_width[lane]) == []
    lane = on_road[0]
    (event,) = events_with_hero_right_of_centre(town, lane, 5.0, 0.4 * g.lane_width[lane])
    assert event.crossed_lane_markings[0].type != carla.LaneMarkingType.NONE


# Town10HD's junction 841 (no lights): road 875 lane -2 goes straight, road 843 lane -1 turns in from a
# side road; both end in the same exit lane, where a hero and an NPC collided in the autopilot's
# evaluation (seed 10008).
STRAIGHT, TURN_IN = (875, 0, -2), (843, 0, -1)


def merge_junction():
    town = load_town(real_town_path("Town10HD"))
    g = town.lanes
    lane = {tuple(k): i for i, k in enumerate(g.lane_key.tolist())}
    straight, turn_in = lane[STRAIGHT], lane[TURN_IN]
    (exit_,) = g.successors(straight)
    assert list(g.successors(turn_in)) == [exit_] and g.lane_light[straight] < 0
    approach = next(k for k in range(g.num_lanes) if straight in g.successors(k))
    side = next(k for k in range(g.num_lanes) if turn_in in g.successors(k))
    return town, approach, straight, side, turn_in, int(exit_)


def spawn_hero(world, town, lane: int, s: float, speed: float):
    (x, y, z), yaw = (v[0] for v in town.lanes.interpolate(np.array([lane]), np.array([s])))
    bp = world.get_blueprint_library().find("vehicle.tesla.model3")
    hero = world.spawn_actor(
        bp,
        carla.Transform(
            carla.Location(float(x), float(y), float(z)), carla.Rotation(yaw=float(np.degrees(yaw)))
        ),
    )
    world._free.v[hero._row] = speed
    return hero


def spawn_npc(world, lane: int, s: float, speed: float, then: list[int]):
    (npc,) = world.spawn_npcs_at(np.array([lane]), np.array([s]), ["vehicle.tesla.model3"])
    world.traffic.plan[npc._row, 1 : 1 + len(then)] = then
    world.traffic.v[npc._row] = speed
    return npc


def test_the_autopilot_waits_at_an_unsignalled_junction_for_a_car_turning_into_its_exit():
    """The hero 8 m before the entry at 6 m/s, an NPC at 5 m/s 5 m before its turn into the same exit,
    already given right of way: driving on (the autopilot without its junction check) collides; the
    autopilot waits and does not."""
    from carla_env.agents import RouteAutopilot
    from carla_env.maps.route import plan_route

    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    collided = {}
    for checks_junction in (False, True):
        world = EmbeddedWorld(town, seed=0)
        start = g.lane_length[approach] - 8.0
        hero = spawn_hero(world, town, approach, start, 6.0)
        npc = spawn_npc(world, side, g.lane_length[side] - 5.0, 5.0, [turn_in, exit_])
        world.traffic.granted[npc._row] = turn_in  # it already has right of way
        route = plan_route(g, (approach, start), (exit_, 30.0))
        assert route.sequence == [approach, straight, exit_] and route.junction.any()
        autopilot = RouteAutopilot()
        if not checks_junction:
            autopilot._entry_to_yield_at = lambda *args: None
        collided[checks_junction] = False
        for _ in range(200):
            hero.apply_control(autopilot.run_step(hero, route, world.delta_seconds))
            world.tick()
            collided[checks_junction] |= any(hero.id in pair for pair in world.collisions)
        # it went on through the junction, after waiting
        assert world._vehicle_lane(hero)[0] not in (approach, straight) or collided[checks_junction]
    assert collided == {False: True, True: False}


def test_the_yield_penalty_charges_a_hero_too_fast_to_wait_where_the_autopilot_waits():
    """The merge above, the hero 5 m before the entry at 6 m/s: the autopilot's rule (committed: it can
    no longer stop before the entry at 6 m/s^2) drives on, as it must; the reward's (junction entries
    checked however near) wants it stopped at the entry, and yield_penalty charges the m/s it is over
    the speed that stops it there at 4 m/s^2. The NPC is read from the Scene's arrays, as through the API.
    Without the NPC nothing is charged."""
    import math
    from types import SimpleNamespace

    from carla_env.driving_state import OtherVehicles, junction_entry_to_yield_at
    from carla_env.maps.route import plan_route
    from experiments.driving import RouteDrivingExperiment

    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    for with_npc in (True, False):
        world = EmbeddedWorld(town, seed=0)
        start = g.lane_length[approach] - 5.0
        hero = spawn_hero(world, town, approach, start, 6.0)
        if with_npc:
            npc = spawn_npc(world, side, g.lane_length[side] - 5.0, 5.0, [turn_in, exit_])
            world.traffic.granted[npc._row] = turn_in
        world.tick()
        route = plan_route(g, (approach, start), (exit_, 30.0))
        here = route.progress((hero.get_location().x, hero.get_location().y))
        index = int(np.searchsorted(route.distance, here))
        scene, extent = world.birdview_scene(hero), hero.bounding_box.extent
        speed = scene.ego_speed
        from_scene, from_api = OtherVehicles.from_scene(scene), OtherVehicles.from_world(hero)
        assert np.allclose(from_scene.xy, from_api.xy, atol=1e-4)
        assert np.allclose(from_scene.speed, from_api.speed, atol=1e-4)
        entry = float(route.distance[np.flatnonzero(route.junction)[0]])
        car = (route, index, speed, extent.x, extent.y)
        # the autopilot: too near to stop, it drives on; the reward's rule wants it stopped
        assert junction_entry_to_yield_at(*car, from_api, may_commit=True) is None
        assert junction_entry_to_yield_at(*car, from_api, may_commit=False) == (entry if with_npc else None)
        past = (
            route,
            int(np.searchsorted(route.distance, entry - extent.x + 0.5)),
            speed,
            extent.x,
            extent.y,
        )
        assert not route.junction[past[1]]  # the centre before the junction, the front bumper past its entry
        assert (
            junction_entry_to_yield_at(*past, from_api, may_commit=False) is None
        )  # stopping there blocks it
        assert junction_entry_to_yield_at(*car, from_scene, may_commit=False) == (entry if with_npc else None)
        experiment = RouteDrivingExperiment.__new__(RouteDrivingExperiment)
        experiment.route, experiment.options = route, SimpleNamespace()
        state = SimpleNamespace(speed=speed, route_index=index, progress=here)
        core = SimpleNamespace(hero=hero, birdview_scene=lambda h, scene=scene: scene)
        over = experiment.speed_over_yield(state, core)
        stop_speed = math.sqrt(2 * 4.0 * (entry - here - extent.x - 1.0))
        assert over == (pytest.approx(speed - stop_speed, abs=1e-6) if with_npc else 0.0)
        assert not with_npc or over > 1.0


def test_an_npc_lets_a_hero_nearer_the_merge_go_first():
    """An NPC turning into the exit lane yields to a hero already on the straight junction lane and
    nearer the merge (the NPCs' own merge rule, now for heroes too): it stops short, no collision."""
    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    world = EmbeddedWorld(town, seed=0)
    hero = spawn_hero(world, town, straight, g.lane_length[straight] - 8.0, 0.0)
    npc = spawn_npc(world, turn_in, g.lane_length[turn_in] - 15.0, 5.0, [exit_])
    for _ in range(100):
        hero.apply_control(carla.VehicleControl(brake=1.0))  # the hero stands in the junction
        world.tick()
        assert not world.collisions
    assert world.traffic.v[npc._row] < 0.1 and world._vehicle_lane(npc)[0] == turn_in


def test_a_light_is_seen_from_the_road_section_before_its_short_last_one():
    """Town10HD road 15 (3 m) ends at a light, after road 16 (12 m): 15 m before the stop line the hero
    is at that light (as CARLA's trigger volume reaches back), though its lane is not the guarded one;
    the autopilot, told only on road 15, ran the red at 8 m/s (seed 10042)."""
    town = load_town(real_town_path("Town10HD"))
    g = town.lanes
    lane = {tuple(k): i for i, k in enumerate(g.lane_key.tolist())}
    before, guarded = lane[(16, 0, 1)], lane[(15, 0, 1)]
    assert list(g.successors(before)) == [guarded] and g.lane_light[guarded] >= 0 > g.lane_light[before]
    assert g.lane_length[guarded] < 5.0
    for to_stop_line, seen in ((14.0, True), (15.4, False)):
        world = EmbeddedWorld(town, seed=0)
        hero = spawn_hero(
            world, town, before, g.lane_length[before] + g.lane_length[guarded] - to_stop_line, 0.0
        )
        assert world._vehicle_lane(hero)[0] == before
        light = hero.get_traffic_light()
        assert (light is not None) == seen and hero.is_at_traffic_light() == seen
        if seen:
            assert light.index == g.lane_light[guarded]


def test_an_npc_is_not_given_a_junction_run_a_hero_too_near_to_stop_may_take():
    """A hero 6 m before the unsignalled junction at 8 m/s cannot stop before it (3 m/s^2 needs 11 m):
    an NPC approaching the crossing path waits, and is given its run only once the hero is through."""
    from carla_env.agents import RouteAutopilot
    from carla_env.maps.route import plan_route

    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    world = EmbeddedWorld(town, seed=0)
    start = g.lane_length[approach] - 6.0
    hero = spawn_hero(world, town, approach, start, 8.0)
    npc = spawn_npc(world, side, g.lane_length[side] - 10.0, 5.0, [turn_in, exit_])
    route = plan_route(g, (approach, start), (exit_, 30.0))
    driver = RouteAutopilot()
    driver._entry_to_yield_at = lambda *args: None  # the simulator's part alone
    granted_while_hero_approached = False
    for _ in range(200):
        hero.apply_control(driver.run_step(hero, route, world.delta_seconds))
        world.tick()
        assert not world.collisions
        on_approach = world._vehicle_lane(hero)[0] == approach
        granted_while_hero_approached |= on_approach and world.traffic.granted[npc._row] == turn_in
    assert not granted_while_hero_approached
    assert world._vehicle_lane(npc)[0] != side  # and it went on afterwards


# Town10HD's lane (4, 0, -2) fans out in junction 468: (476, 0, -1) and (486, 0, -1) turn side by side,
# on top of each other at first and a lane apart at their ends. In the autopilot's evaluation (seed
# 10000) an NPC stood on (476, -1) behind a walker on the crossing, its centre 2.8 m off the centre line
# of the hero's route along (486, -1) but its box 0.9 m: the autopilot, which took a vehicle to be on
# its route by its centre (within 1.8 m), drove into it.
FAN_APPROACH, FAN_SIBLING, FAN_TURN = (4, 0, -2), (476, 0, -1), (486, 0, -1)


def test_the_autopilot_stops_for_a_car_standing_half_across_its_turn_and_passes_one_clear_of_it():
    """A car stands on the sibling junction lane, 14 m along it (its box over the hero's path, its
    centre 2.6 m off the route) or 21 m along it (a lane beside the path): the autopilot, coming at
    5 m/s along the turning lane, stops short of the first and drives past the second; no collision."""
    from carla_env.agents import RouteAutopilot
    from carla_env.maps.route import plan_route

    town = load_town(real_town_path("Town10HD"))
    g = town.lanes
    lane = {tuple(k): i for i, k in enumerate(g.lane_key.tolist())}
    approach, sibling, turn = lane[FAN_APPROACH], lane[FAN_SIBLING], lane[FAN_TURN]
    assert {sibling, turn} <= set(g.successors(approach))
    (exit_,) = g.successors(turn)
    start = g.lane_length[approach] - 15.0
    for at, in_the_way in ((14.0, True), (21.0, False)):
        world = EmbeddedWorld(town, seed=0)
        world._light_state[:], world._lights_valid_until = 2, np.inf  # the approach's light stays green
        hero = spawn_hero(world, town, approach, start, 5.0)
        standing = spawn_hero(world, town, sibling, at, 0.0)  # outside the traffic model, braked
        route = plan_route(g, (approach, start), (exit_, 20.0))
        assert route.sequence == [approach, turn, exit_]
        loc = standing.get_location()
        k, off_route = route.nearest((loc.x, loc.y))
        assert off_route > 2.0  # its centre is off the route: only its box can tell
        autopilot, collided, furthest = RouteAutopilot(), False, 0.0
        for _ in range(200):
            standing.apply_control(carla.VehicleControl(brake=1.0))
            hero.apply_control(autopilot.run_step(hero, route, world.delta_seconds))
            world.tick()
            collided |= any(hero.id in pair for pair in world.collisions)
            furthest = max(furthest, route.progress((hero.get_location().x, hero.get_location().y)))
        assert not collided
        if in_the_way:  # it stopped short of the car and stands there
            assert furthest < route.distance[k] - 3.0 and hero.get_velocity().length() < 0.1
        else:
            assert furthest > route.distance[k] + 10.0


def test_an_npc_yields_to_a_hero_merging_nearer_the_merge_but_not_to_a_walker_on_its_lane():
    """A road user standing on the side lane 4 m before the merge goes first: the NPC on the straight
    junction lane (granted, 8 m in) yields to a hero there. Not to a walker standing on a crossing of
    that lane: it is not on the NPC's path, and a walker stops only those whose path it is on. On
    Town10HD (seed 10017) an NPC stood mid-junction for such a walker, across the hero's path."""
    from carla_env.embedded.world import WALKERS

    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    on_side = np.array([g.lane_length[turn_in] - 4.0])
    for holds, half in ((True, 2.4), (False, WALKERS["walker.pedestrian.0001"][0])):
        world = EmbeddedWorld(town, seed=0)
        npc = spawn_npc(world, straight, 8.0, 5.0, [exit_])
        world.traffic.granted[npc._row] = straight
        user = (np.array([turn_in]), on_side, np.zeros(1), np.array([half]), np.array([holds]))
        for _ in range(100):  # 5 s of the traffic model alone, given the road user as the world gives it
            world.traffic.step(world.delta_seconds, world._light_state, *user)
        lane_now = int(world.traffic.plan[npc._row, 0])
        if holds:  # it waits on the straight lane short of the merge
            assert lane_now == straight and world.traffic.v[npc._row] < 0.1
        else:
            assert lane_now == exit_


def test_the_autopilot_that_crept_past_its_stop_point_still_waits_for_a_car_with_right_of_way():
    """Waiting at the entry, the autopilot creeps: here its front is 0.4 m past its stop point (1 m before
    the junction) at 0.6 m/s, when an NPC with right of way comes to the same exit. It can stop short of
    the junction, so it is not committed: it waits, and follows the NPC into the exit. (Taking itself to be
    committed, it drove in front of a granted NPC platoon on Town10HD, seed 10017, and stood there.)"""
    from carla_env.agents import RouteAutopilot
    from carla_env.maps.route import plan_route

    town, approach, straight, side, turn_in, exit_ = merge_junction()
    g = town.lanes
    world = EmbeddedWorld(town, seed=0)
    start = g.lane_length[approach] - 2.396 - 0.6  # the Model 3's front bumper 0.6 m before the entry
    hero = spawn_hero(world, town, approach, start, 0.6)
    npc = spawn_npc(world, side, g.lane_length[side] - 5.0, 5.0, [turn_in, exit_])
    world.traffic.granted[npc._row] = turn_in
    route = plan_route(g, (approach, start), (exit_, 30.0))
    autopilot, waited, first_on_exit = RouteAutopilot(), 0, None
    for _ in range(200):
        hero.apply_control(autopilot.run_step(hero, route, world.delta_seconds))
        world.tick()
        assert not world.collisions
        waited += hero.get_velocity().x ** 2 + hero.get_velocity().y ** 2 < 0.01
        if first_on_exit is None and exit_ in (world._vehicle_lane(hero)[0], world.traffic.plan[npc._row, 0]):
            first_on_exit = "npc" if world.traffic.plan[npc._row, 0] == exit_ else "hero"
    assert waited > 30 and first_on_exit == "npc" and world._vehicle_lane(hero)[0] == exit_
