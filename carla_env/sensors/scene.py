"""Build a birdview `Scene` through the CARLA API only, so it works on both backends."""

from __future__ import annotations

import math

import numpy as np

from carla_env.maps.lane_graph import LaneGraph
from carla_env.sensors.birdview import Scene


def _box(actor) -> tuple[float, float, float, float, float]:
    t = actor.get_transform()
    e = actor.bounding_box.extent
    return (t.location.x, t.location.y, math.radians(t.rotation.yaw), e.x, e.y)


def scene_from_world(world, hero, lanes: LaneGraph) -> Scene:
    """Scene of `world` around `hero`: other vehicles, walkers, light states (by OpenDRIVE signal id)."""
    actors = world.get_actors()
    vehicles = [_box(a) for a in actors.filter("vehicle.*") if a.id != hero.id]
    walkers = [_box(a) for a in actors.filter("walker.*")]
    states = np.full(len(lanes.light_id), -1, np.int64)
    index = {int(i): k for k, i in enumerate(lanes.light_id)}
    for light in actors.filter("traffic.traffic_light*"):
        k = index.get(int(light.get_opendrive_id()))
        if k is not None:
            states[k] = int(light.get_state())
    v = hero.get_velocity()
    return Scene(
        ego=np.array(_box(hero)),
        ego_speed=math.hypot(v.x, v.y),
        vehicles=np.array(vehicles, float).reshape(-1, 5),
        walkers=np.array(walkers, float).reshape(-1, 5),
        light_states=states,
    )
