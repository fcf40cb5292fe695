import carla
import numpy as np
import pytest

from carla_env.embedded import EmbeddedWorld, LightTiming
from carla_env.maps import load_town


@pytest.fixture
def town():
    return load_town("GridTown01")


def hero_on_lane(world, town, lane=None, s=10.0):
    g = town.lanes
    if lane is None:
        lane = int(np.flatnonzero(~g.is_junction & (g.lane_length > 40))[0])
    p, yaw = g.interpolate(np.array([lane]), np.array([s]))
    bp = world.get_blueprint_library().find("vehicle.tesla.model3")
    bp.set_attribute("role_name", "hero")
    t = carla.Transform(carla.Location(*map(float, p[0])), carla.Rotation(yaw=float(np.degrees(yaw[0]))))
    return world.spawn_actor(bp, t), lane


def test_world_answers_the_carla_api_subset(town):
    world = EmbeddedWorld(town, seed=0)
    assert isinstance(world.get_map(), carla.Map)
    assert world.get_map().name == "GridTown01"
    hero, _ = hero_on_lane(world, town)
    npcs = world.spawn_traffic(20)
    assert len(npcs) == 20
    vehicles = world.get_actors().filter("vehicle.*")
    assert len(vehicles) == 21
    assert [a for a in vehicles if a.attributes["role_name"] == "hero"] == [hero]
    assert len(world.get_actors().filter("traffic.traffic_light*")) == len(town.lanes.light_id)
    assert world.get_actors([hero.id])[0] is hero
    assert isinstance(hero.get_transform(), carla.Transform)
    assert isinstance(hero.get_velocity(), carla.Vector3D)
    assert isinstance(hero.bounding_box, carla.BoundingBox) and hero.bounding_box.extent.x > 2.0
    settings = world.get_settings()
    assert settings.synchronous_mode and settings.fixed_delta_seconds == pytest.approx(0.05)
    settings.fixed_delta_seconds = 0.1
    world.apply_settings(settings)
    frame = world.tick()
    snap = world.get_snapshot()
    assert snap.frame == frame == 1 and snap.timestamp.elapsed_seconds == pytest.approx(0.1)
    assert snap.find(hero.id) is hero
    control = carla.VehicleControl(throttle=0.3)
    hero.apply_control(control)
    assert hero.get_control() == control
    with pytest.raises(TypeError):
        hero.apply_control("full throttle")
    assert 0 < hero.get_speed_limit() < 80


def test_spawning_on_an_occupied_spot_fails_like_carla(town):
    world = EmbeddedWorld(town, seed=0)
    hero, _ = hero_on_lane(world, town)
    bp = world.get_blueprint_library().find("vehicle.audi.a2")
    assert world.try_spawn_actor(bp, hero.get_transform()) is None
    with pytest.raises(RuntimeError, match="collision at spawn position"):
        world.spawn_actor(bp, hero.get_transform())
    with pytest.raises(IndexError):
        world.get_blueprint_library().find("vehicle.nonexistent.car")


def test_destroy_removes_actors_and_their_sensors(town):
    world = EmbeddedWorld(town, seed=0)
    hero, _ = hero_on_lane(world, town)
    npcs = world.spawn_traffic(5)
    sensor = world.spawn_actor(
        world.get_blueprint_library().find("sensor.other.collision"), carla.Transform(), attach_to=hero
    )
    assert npcs[2].destroy() and not npcs[2].is_alive
    assert world.traffic.count == 4
    world.tick()
    assert npcs[3].get_location().distance(npcs[3].get_location()) == 0
    hero.destroy()
    assert not sensor.is_alive
    assert len(world.get_actors().filter("vehicle.*")) == 4


def test_a_destroyed_vehicle_raises_instead_of_answering_for_the_vehicle_now_in_its_row(town):
    world = EmbeddedWorld(town, seed=0)
    npcs = world.spawn_traffic(3)
    assert npcs[0].destroy()
    for call in (
        npcs[0].get_location,
        npcs[0].get_velocity,
        lambda: npcs[0].apply_control(carla.VehicleControl()),
    ):
        with pytest.raises(RuntimeError, match="destroyed actor"):
            call()
    assert npcs[1].get_location() != npcs[2].get_location()


def test_traffic_lights_cycle_one_phase_green_at_a_time(town):
    timing = LightTiming(green=4.0, yellow=1.0, red=1.0)
    world = EmbeddedWorld(town, seed=0, light_timing=timing)
    g = town.lanes
    lights = world.get_actors().filter("traffic.traffic_light*")
    seen = {
        carla.TrafficLightState.Red: 0,
        carla.TrafficLightState.Yellow: 0,
        carla.TrafficLightState.Green: 0,
    }
    for _ in range(int(30 / world.delta_seconds)):
        world.tick()
        states = world.light_states
        for j in np.unique(g.light_junction):
            members = g.light_junction == j
            # One phase at most is not red; each junction's lights belong to its phases.
            assert len(np.unique(g.light_phase[members & (states != 0)])) <= 1
        for light in lights:
            seen[light.get_state()] += 1
    assert all(count > 0 for count in seen.values())


def test_hero_at_a_light_reports_its_state(town):
    world = EmbeddedWorld(town, seed=0)
    g = town.lanes
    lane = int(np.flatnonzero(g.lane_light >= 0)[0])
    hero, _ = hero_on_lane(world, town, lane, s=g.lane_length[lane] - 5.0)
    world.tick()
    light = hero.get_traffic_light()
    assert light is not None and hero.is_at_traffic_light()
    assert hero.get_traffic_light_state() == light.get_state()
    assert (
        light.get_state()
        == {
            0: carla.TrafficLightState.Red,
            1: carla.TrafficLightState.Yellow,
            2: carla.TrafficLightState.Green,
        }[int(world.light_states[g.lane_light[lane]])]
    )


def test_collision_sensor_reports_the_other_actor(town):
    world = EmbeddedWorld(town, seed=0)
    g = town.lanes
    lane = int(np.flatnonzero(~g.is_junction & (g.lane_length > 60))[0])
    hero, _ = hero_on_lane(world, town, lane, s=5.0)
    # An NPC parked 25 m ahead on the same lane; drive into it.
    (npc,) = world.spawn_npcs_at(np.array([lane]), np.array([30.0]), ["vehicle.audi.a2"])
    world.traffic.speed_factor[:] = 0.0  # it (nearly) stays put
    events = []
    bp = world.get_blueprint_library().find("sensor.other.collision")
    world.spawn_actor(bp, carla.Transform(), attach_to=hero).listen(events.append)
    for _ in range(100):
        hero.apply_control(carla.VehicleControl(throttle=1.0))
        world.tick()
        if events:
            break
    assert events, "driving into a parked car must raise a collision event"
    assert events[0].other_actor is npc and events[0].actor is hero
    assert events[0].normal_impulse.length() > 0
    assert (hero.id, npc.id) in world.collisions


def lane_with_marks(g, left=None, right=None):
    for lane in np.flatnonzero(~g.is_junction & (g.lane_length > 50)):
        p = g.lane_start[lane] + 10
        if (left is None or g.mark_left[p] == left) and (right is None or g.mark_right[p] == right):
            return int(lane)
    raise AssertionError("no such lane")


@pytest.mark.parametrize(
    ("steer", "marking"),
    [(-0.15, carla.LaneMarkingType.Solid), (0.15, carla.LaneMarkingType.Broken)],
)
def test_lane_invasion_reports_the_crossed_marking(town, steer, marking):
    """Inner lane of an avenue: solid-solid centre line on the left, broken divider on the right."""
    world = EmbeddedWorld(town, seed=0)
    g = town.lanes
    solid_left = int(carla.LaneMarkingType.SolidSolid) if steer < 0 else None
    lane = lane_with_marks(g, left=solid_left, right=int(carla.LaneMarkingType.Broken))
    if steer < 0:
        marking = carla.LaneMarkingType.SolidSolid
    hero, _ = hero_on_lane(world, town, lane, s=5.0)
    events = []
    bp = world.get_blueprint_library().find("sensor.other.lane_invasion")
    world.spawn_actor(bp, carla.Transform(), attach_to=hero).listen(events.append)
    for _ in range(60):
        hero.apply_control(carla.VehicleControl(throttle=0.5, steer=steer))
        world.tick()
        if events:
            break
    assert events, "steering across a marking must raise a lane-invasion event"
    assert [m.type for m in events[0].crossed_lane_markings] == [marking]


def test_a_corner_still_behind_the_lane_start_is_no_invasion(town):
    """Leaving a turn the car is angled: its rear corner may overhang the kerb line while still in the
    junction (no paint there). The same pose mid-lane puts that corner over the line: an invasion."""
    from carla_env.embedded.world import UNMARKED

    g = town.lanes
    lane = next(
        int(k)
        for k in np.flatnonzero(~g.is_junction & (g.lane_length > 40))
        if (g.mark_right[g.lane_start[k] : g.lane_start[k] + g.lane_count[k]] != UNMARKED).all()
    )
    crossed = {}
    for s in (1.0, 20.0):
        world = EmbeddedWorld(town, seed=0)
        points, yaws = g.interpolate(np.array([lane]), np.array([s]))
        (x, y, z), yaw = points[0], yaws[0]
        right = 0.5  # metres right of the centre line; nose 25 degrees to the left
        at = carla.Transform(
            carla.Location(float(x - right * np.sin(yaw)), float(y + right * np.cos(yaw)), float(z)),
            carla.Rotation(yaw=float(np.degrees(yaw) - 25.0)),
        )
        bp = world.get_blueprint_library().find("vehicle.tesla.model3")
        hero = world.spawn_actor(bp, at)
        assert world._vehicle_lane(hero)[0] == lane
        events = []
        sensor = world.get_blueprint_library().find("sensor.other.lane_invasion")
        world.spawn_actor(sensor, carla.Transform(), attach_to=hero).listen(events.append)
        hero.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
        crossed[s] = [m.type for e in events for m in e.crossed_lane_markings]
    assert crossed[1.0] == []
    assert len(crossed[20.0]) == 1 and crossed[20.0][0] != carla.LaneMarkingType.NONE


def test_driving_through_junctions_invades_no_lane(town):
    """Junction lanes carry no paint (NONE): crossing between them is no invasion."""
    from carla_env.agents import LaneFollower

    world = EmbeddedWorld(town, seed=0)
    g = town.lanes
    lane = int(np.flatnonzero(~g.is_junction & (g.lane_length > 50))[0])
    hero, _ = hero_on_lane(world, town, lane, s=5.0)
    events = []
    bp = world.get_blueprint_library().find("sensor.other.lane_invasion")
    world.spawn_actor(bp, carla.Transform(), attach_to=hero).listen(events.append)
    driver, junction_ticks = LaneFollower(g, target_speed=5.0), 0
    for _ in range(600):
        hero.apply_control(driver.run_step(hero))
        world.tick()
        junction_ticks += bool(g.is_junction[world._vehicle_lane(hero)[0]])
    assert junction_ticks > 20, "the drive must pass junctions to test anything"
    crossed = [m.type for e in events for m in e.crossed_lane_markings]
    assert carla.LaneMarkingType.NONE not in crossed


def test_off_road_detection(town):
    world = EmbeddedWorld(town, seed=0)
    g = town.lanes
    lane = int(np.flatnonzero(~g.is_junction & (g.lane_length > 60) & (g.lane_right < 0))[0])
    hero, _ = hero_on_lane(world, town, lane, s=5.0)
    assert world.on_driving_lane(hero)
    # Steer hard right off the outermost lane: off the road within a few seconds.
    for _ in range(80):
        hero.apply_control(carla.VehicleControl(throttle=0.6, steer=0.4))
        world.tick()
    assert not world.on_driving_lane(hero)
    wp = town.map.get_waypoint(hero.get_location(), project_to_road=False, lane_type=carla.LaneType.Driving)
    assert wp is None  # carla.Map agrees: no driving lane under the car
