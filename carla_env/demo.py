"""Drive the embedded simulator: a lane-following hero among background traffic and pedestrians.

python -m carla_env.demo --town GridTown01 --vehicles 30 --walkers 60 --seconds 60

The hero slows behind a vehicle or a walker in the corridor ahead of it and stops at red and yellow
lights, so "ticks in contact" (its box overlapping another actor's) counts real crashes, not the lane
follower driving through the traffic it does not see.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import carla

from carla_env.agents import LaneFollower
from carla_env.backends import make_core, pin_backend
from carla_env.config import ConfigError, load_config
from carla_env.maps.town import TownError, check_town

CRUISE_SPEED = 8.0  # m/s
DEMO_WALKERS = 60
TIME_GAP = 1.5  # s to a vehicle ahead
STANDSTILL_GAP = 3.0  # m bumper to bumper at rest
CORRIDOR_HALF_WIDTH = 2.0  # m either side of the hero's heading: a vehicle in it is ahead
LOOK_AHEAD = 40.0  # m
STOP_STATES = (carla.TrafficLightState.Red, carla.TrafficLightState.Yellow)


def safe_speed(hero, world) -> float:
    """The speed the road ahead allows: CRUISE_SPEED, less behind a vehicle or walker ahead, 0 at a
    red or yellow light. CARLA API only."""
    if hero.is_at_traffic_light() and hero.get_traffic_light_state() in STOP_STATES:
        return 0.0
    t = hero.get_transform()
    yaw = math.radians(t.rotation.yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    own = hero.bounding_box.extent.x
    speed = CRUISE_SPEED
    actors = world.get_actors()
    for other in [*actors.filter("vehicle.*"), *actors.filter("walker.*")]:
        if other.id == hero.id:
            continue
        loc = other.get_location()
        dx, dy = loc.x - t.location.x, loc.y - t.location.y
        ahead, aside = dx * c + dy * s, -dx * s + dy * c
        if 0.0 < ahead < LOOK_AHEAD and abs(aside) < CORRIDOR_HALF_WIDTH:
            gap = ahead - own - other.bounding_box.extent.x
            speed = min(speed, max(0.0, (gap - STANDSTILL_GAP) / TIME_GAP))
    return speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (simulator section is used)")
    parser.add_argument("--town", help="generated town name, grid:seed=N,..., .xodr path or CARLA town")
    parser.add_argument("--vehicles", type=int, help="background vehicles")
    parser.add_argument(
        "--walkers", type=int, help="pedestrians (simulator.carla.walkers; default 60 without --config)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.town is not None:
        try:
            check_town(args.town)  # blame the flag, not a config file
        except TownError as e:
            print(f"--town: {e}", file=sys.stderr)
            return 2
    sim = {"backend": "embedded"}
    for key, value in (("town", args.town), ("seed", args.seed)):
        if value is not None:
            sim[key] = value
    if args.vehicles is not None:
        sim["traffic"] = {"vehicles": args.vehicles}
    walkers = args.walkers if args.walkers is not None or args.config else DEMO_WALKERS
    if walkers is not None:
        sim["carla"] = {"walkers": walkers}
    try:
        config, choice = pin_backend(load_config(args.config, {"simulator": sim}))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{choice}; town: {config.simulator.town}")
    try:
        core = make_core(config.simulator.for_worker(0))
    except TownError as e:  # a map that parses but cannot be driven (e.g. no lane long enough to spawn on)
        print(e, file=sys.stderr)
        return 2
    core.reset()
    hero_id = core.hero.id
    driver = LaneFollower(core.town.lanes, target_speed=CRUISE_SPEED, seed=config.simulator.seed)
    steps = int(args.seconds / config.simulator.timestep)
    collisions = distance = 0.0
    start = time.perf_counter()
    last = core.hero.get_location()
    for _ in range(steps):
        driver.target_speed = safe_speed(core.hero, core.world)
        core.tick(driver.run_step(core.hero))
        collisions += any(hero_id in pair for pair in core.world.collisions)
        loc = core.hero.get_location()
        distance += loc.distance(last)
        last = loc
    wall = time.perf_counter() - start
    npcs = core.world.traffic
    walkers = len(core.world.get_actors().filter("walker.*"))
    print(
        f"{steps} ticks in {wall:.2f}s ({steps / wall:.0f} ticks/s, {args.seconds / wall:.0f}x real time); "
        f"hero drove {distance:.0f} m, {int(collisions)} ticks in contact; "
        f"{npcs.count} NPCs"
        + (f", mean speed {npcs.v.mean():.1f} m/s" if npcs.count else "")
        + f"; {walkers} walkers"
    )
    core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
