"""Drive the embedded simulator: a lane-following hero among background traffic.

python -m carla_env.demo --town GridTown01 --vehicles 30 --seconds 60
"""

from __future__ import annotations

import argparse
import sys
import time

from carla_env.agents import LaneFollower
from carla_env.backends import make_core, pin_backend
from carla_env.config import ConfigError, load_config
from carla_env.maps.town import TownError, check_town


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (simulator section is used)")
    parser.add_argument("--town", help="generated town name, grid:seed=N,..., .xodr path or CARLA town")
    parser.add_argument("--vehicles", type=int, help="background vehicles")
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
    driver = LaneFollower(core.town.lanes, seed=config.simulator.seed)
    steps = int(args.seconds / config.simulator.timestep)
    collisions = distance = 0.0
    start = time.perf_counter()
    last = core.hero.get_location()
    for _ in range(steps):
        core.tick(driver.run_step(core.hero))
        collisions += any(hero_id in pair for pair in core.world.collisions)
        loc = core.hero.get_location()
        distance += loc.distance(last)
        last = loc
    wall = time.perf_counter() - start
    npcs = core.world.traffic
    print(
        f"{steps} ticks in {wall:.2f}s ({steps / wall:.0f} ticks/s, {args.seconds / wall:.0f}x real time); "
        f"hero drove {distance:.0f} m, {int(collisions)} ticks in contact; "
        f"{npcs.count} NPCs, mean speed {npcs.v.mean():.1f} m/s"
    )
    core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
