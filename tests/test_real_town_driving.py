"""The embedded simulator on real CARLA towns, where their OpenDRIVE differs from the generated towns':
junction lanes painted in the map are no lane invasion (as LibCarla's LaneCrossingCalculator)."""

import carla
import numpy as np

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
