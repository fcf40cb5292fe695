"""Bird's-eye-view throughput and size, one core.

    python bench/bev_throughput.py --town GridTown01 --vehicles 50 --json

obs_per_s: full default observation (24 channels, 4 history frames) rendered from a
Scene of 50 vehicles; obs_per_s_packed: the same, bit-packed (what the env emits with packed: true); obs_per_s_with_scene_api: the same, the Scene built through
the CARLA API (what the carla backend does); obs_per_s_with_scene_arrays: the Scene
from the embedded world's arrays. raw_bytes / packed_bytes: one observation.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from carla_env.agents import LaneFollower
from carla_env.embedded import EmbeddedWorld
from carla_env.maps import load_town
from carla_env.sensors import BirdviewRenderer, pack, scene_from_world


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--town", default="GridTown01")
    parser.add_argument("--vehicles", type=int, default=50)
    parser.add_argument("--obs", type=int, default=2000, help="observations per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    town = load_town(args.town)
    world = EmbeddedWorld(town, seed=args.seed)
    hero = world.spawn_actor(
        world.get_blueprint_library().find("vehicle.tesla.model3"), town.spawn_points(seed=args.seed)[0]
    )
    world.spawn_traffic(args.vehicles)
    renderer = BirdviewRenderer(town.lanes, delta_seconds=world.delta_seconds)
    driver = LaneFollower(town.lanes, seed=args.seed)
    for _ in range(200):  # fill the history with a moving scene
        hero.apply_control(driver.run_step(hero))
        world.tick()
        obs = renderer(world.birdview_scene(hero))
    scene = world.birdview_scene(hero)
    result = {
        "town": args.town,
        "vehicles": len(scene.vehicles),
        "channels": renderer.spec.num_channels,
        "obs_per_s": rate(lambda: renderer(scene), args.obs),
        # the scene built anew each time (birdview_scene returns the tick's cached one)
        "obs_per_s_with_scene_arrays": rate(lambda: renderer(world._build_scene(hero)), args.obs),
        "obs_per_s_with_scene_api": rate(
            lambda: renderer(scene_from_world(world, hero, town.lanes)), args.obs // 4
        ),
        "obs_per_s_packed": rate(lambda: pack(renderer(scene)), args.obs),
        "pack_per_s": rate(lambda: pack(obs), args.obs),
        "raw_bytes": int(obs.nbytes),
        "packed_bytes": int(pack(obs).nbytes),
    }
    result["packed_fraction"] = result["packed_bytes"] / result["raw_bytes"]
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(result) if args.json else "\n".join(f"{k:>28}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
