"""Build a birdview `Scene` through the CARLA API only, so it works on both backends."""

from __future__ import annotations

import math

import numpy as np

from carla_env.maps.lane_graph import LaneGraph
from carla_env.sensors.birdview import Scene


def _box(actor) -> tuple[float, float, float, float, float]:
    """(x, y, yaw, half length, half width) of the actor's box; the box's centre sits at
    `bounding_box.location` in the actor's frame (most CARLA vehicles: ahead of the origin)."""
    t = actor.get_transform()
    box = actor.bounding_box
    yaw = math.radians(t.rotation.yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    x = t.location.x + c * box.location.x - s * box.location.y
    y = t.location.y + s * box.location.x + c * box.location.y
    return (x, y, yaw, box.extent.x, box.extent.y)


def _signal_id(light) -> int | None:
    """A light's OpenDRIVE signal id as the lane graph keys it; None for an empty or non-numeric id."""
    try:
        return int(light.get_opendrive_id())
    except ValueError:
        return None


def scene_from_world(world, hero, lanes: LaneGraph) -> Scene:
    """Scene of `world` around `hero`: other vehicles and walkers (and their velocities), light states (by
    OpenDRIVE signal id)."""
    actors = world.get_actors()
    others = [a for a in actors.filter("vehicle.*") if a.id != hero.id]
    vehicles = [_box(a) for a in others]
    vehicle_velocities = [(v.x, v.y) for v in (a.get_velocity() for a in others)]
    people = list(actors.filter("walker.*"))
    walkers = [_box(a) for a in people]
    walker_velocities = [(v.x, v.y) for v in (a.get_velocity() for a in people)]
    states = np.full(len(lanes.light_id), -1, np.int64)
    index = {int(i): k for k, i in enumerate(lanes.light_id)}
    for light in actors.filter("traffic.traffic_light*"):
        k = index.get(_signal_id(light))
        if k is not None:
            states[k] = int(light.get_state())
    v = hero.get_velocity()
    return Scene(
        ego=np.array(_box(hero)),
        ego_speed=math.hypot(v.x, v.y),
        vehicles=np.array(vehicles, float).reshape(-1, 5),
        walkers=np.array(walkers, float).reshape(-1, 5),
        light_states=states,
        walker_velocities=np.array(walker_velocities, float).reshape(-1, 2),
        vehicle_velocities=np.array(vehicle_velocities, float).reshape(-1, 2),
    )
