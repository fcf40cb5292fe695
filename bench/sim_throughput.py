"""Embedded simulator throughput vs highway-env, measured in the same run on one core.

    python bench/sim_throughput.py --town GridTown01 --vehicles 50 --steps 3000 --json
    python bench/sim_throughput.py --vehicles 50 --walkers 100 --no-peer

embedded_steps_per_s: world ticks per second (wall clock; embedded_cpu_steps_per_s by this
process's CPU time, the steadier figure on a shared machine) with a hero (driven by a lane follower
whose own time is excluded), N background vehicles, W pedestrians (their AI controllers
started, as `walkers: W` does), and collision + lane-invasion sensors listening. highway_env_steps_per_s: highway-v0 with N vehicles and
policy frequency = simulation frequency (one simulation step per env step).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import carla

from carla_env.agents import LaneFollower
from carla_env.embedded import EmbeddedWorld
from carla_env.maps import load_town


def embedded(town_ref: str, vehicles: int, steps: int, seed: int, walkers: int = 0) -> dict:
    town = load_town(town_ref)
    world = EmbeddedWorld(town, seed=seed)
    lib = world.get_blueprint_library()
    hero = world.spawn_actor(lib.find("vehicle.tesla.model3"), town.spawn_points(seed=seed)[0])
    events = []
    for sensor in ("sensor.other.collision", "sensor.other.lane_invasion"):
        world.spawn_actor(lib.find(sensor), carla.Transform(), attach_to=hero).listen(events.append)
    world.spawn_traffic(vehicles)
    people = world.spawn_walkers(walkers, seed=seed)
    driver = LaneFollower(town.lanes, seed=seed)
    for _ in range(50 + 10 * walkers):  # compile/warm caches (walkers: their route tables) untimed
        hero.apply_control(driver.run_step(hero))
        world.tick()
    ticking = cpu = 0.0
    for _ in range(steps):
        hero.apply_control(driver.run_step(hero))
        t0, c0 = time.perf_counter(), time.process_time()
        world.tick()
        ticking += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return {
        "embedded_steps_per_s": steps / ticking,
        "embedded_cpu_steps_per_s": steps / max(cpu, 1e-9),  # this process's CPU time: less swayed by others
        "npcs": world.traffic.count,
        "walkers": len(people),
        "events": len(events),
        "lanes": town.lanes.num_lanes,
        "lane_km": float(town.lanes.lane_length.sum() / 1000),
    }


def highway_env(vehicles: int, steps: int, seed: int) -> float:
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers highway-v0)

    warnings.filterwarnings("ignore")
    env = gym.make(
        "highway-v0",
        config={
            "vehicles_count": vehicles,
            "simulation_frequency": 15,
            "policy_frequency": 15,
            "duration": 10**6,
        },
    )
    env.reset(seed=seed)
    env.step(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(1)  # IDLE
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--town", default="GridTown01", help="generated town name or .xodr path")
    parser.add_argument("--vehicles", type=int, default=50)
    parser.add_argument("--walkers", type=int, default=0, help="pedestrians with AI controllers")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--peer-steps", type=int, default=600, help="highway-env steps (it is ~50x slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peer", action="store_true", help="skip highway-env")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, both simulators
    result = {"town": args.town, "vehicles": args.vehicles, "steps": args.steps}
    result.update(embedded(args.town, args.vehicles, args.steps, args.seed, args.walkers))
    if not args.no_peer:
        result["highway_env_steps_per_s"] = highway_env(args.vehicles, args.peer_steps, args.seed)
        result["ratio"] = result["embedded_steps_per_s"] / result["highway_env_steps_per_s"]
    result = {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
