"""Env steps per second end to end (sampling and learning) for an experiment's config, and where a
training step's time goes (RLlib's own timers).

    python bench/training_throughput.py --exp dqn --json
    python bench/training_throughput.py --exp dqn --profile gpu --replay PrioritizedEpisodeReplayBuffer,TransitionReplay --json
    python bench/training_throughput.py --exp ppo --profile gpu --iterations 3 --json
    python bench/training_throughput.py --exp dqn --profile gpu --update-profile 200 --json   # one DQN update

Each variant builds the algorithm from the config (with profiles.NAME merged where --profile names
one), trains --warmup iterations untimed (learning starts, kernels compile), then --iterations timed
ones. --replay (DQN) runs one variant per replay buffer type, same config otherwise, so the rows
compare in one run; the first row is the base of `speedup`. --update-profile N (DQN with TransitionReplay)
instead times N learner updates alone (draw from the replay, update, priorities) after filling the replay
through a local runner, and lists where their time goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the experiment the config names ('module:Class') imports from here

# RLlib's timers for a training step, in seconds: its exponential averages since the build (warm-up
# included), so a guide to where the time goes; env_steps_per_s is timed here.
TIMERS = (
    "training_step",
    "env_runner_sampling_timer",
    "replay_buffer_add_data_timer",
    "replay_buffer_sampling_timer",
    "learner_update_timer",
    "replay_buffer_update_prios_timer",
    "synch_weights",
    "restore_env_runners",
)


def measure(config, warmup: int, iterations: int) -> dict:
    from carla_env.rllib.algorithm import build_algo_config

    algo = build_algo_config(config).build_algo()
    try:
        for _ in range(warmup):
            result = algo.train()
        steps0 = result["env_runners"]["num_env_steps_sampled_lifetime"] if warmup else 0
        t0 = time.perf_counter()
        for _ in range(iterations):
            result = algo.train()
        elapsed = time.perf_counter() - t0
    finally:
        algo.stop()
    steps = result["env_runners"]["num_env_steps_sampled_lifetime"] - steps0
    timers = result.get("timers", {})
    return {
        "algorithm": type(algo).__name__,
        "env_steps": int(steps),
        "seconds": round(elapsed, 1),
        "env_steps_per_s": round(steps / elapsed, 1),
        "timers_s": {k: round(float(timers[k]), 4) for k in TIMERS if k in timers},
    }


def profile_updates(config, updates: int) -> dict:
    """Milliseconds per DQN update (replay draw, learner update, priorities) and the functions that
    take their time; the replay is filled by the local runner first."""
    import cProfile
    import pstats

    from carla_env.rllib.algorithm import algorithm_class, build_algo_config, has_gpu

    if algorithm_class(config).__name__ != "ArrayReplayDQN":
        sys.exit("--update-profile: needs a DQN config with replay_buffer_config.type: TransitionReplay")
    settings = {**config.training.settings, "num_steps_sampled_before_learning_starts": 0}
    tr = config.training.model_copy(update={"num_env_runners": 0, "envs_per_runner": 8, "settings": settings})
    algo = build_algo_config(config.model_copy(update={"training": tr})).build_algo()
    try:
        algo.train()  # fills the replay (one iteration's env steps), compiles, warms the allocator
        algo._train(10)
        t0 = time.perf_counter()
        algo._train(updates)
        ms = 1000 * (time.perf_counter() - t0) / updates
        profiler = cProfile.Profile()
        profiler.enable()
        algo._train(updates)
        profiler.disable()
    finally:
        algo.stop()
    stats = pstats.Stats(profiler).stats
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    return {
        "batch": config.training.settings.get("train_batch_size_per_learner"),
        "replay_transitions": len(algo.local_replay_buffer),  # a draw's cumulative sum grows with it
        "device": "cuda" if has_gpu() else "cpu",
        "ms_per_update": round(ms, 2),
        "ms_per_update_by_own_time": {
            f"{Path(path).name}:{name}": round(1000 * own / updates, 3)
            for (path, _, name), (_, _, own, _, _) in top
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="dqn", help="experiment folder under experiments/")
    p.add_argument("--config", default=None, help="a config file instead of the experiment's")
    p.add_argument("--profile", default=None, help="merge the config's profiles.NAME (e.g. gpu)")
    p.add_argument("--runners", type=int, default=None, help="num_env_runners (default: the config's)")
    p.add_argument(
        "--replay", default=None, help="DQN: comma-separated replay_buffer_config.type, one row each"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed training iterations first")
    p.add_argument("--iterations", type=int, default=3, help="timed training iterations")
    p.add_argument("--update-profile", type=int, default=0, metavar="N", help="DQN: profile N updates alone")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import ray

    from carla_env.config import apply_profile, load_config
    from carla_env.rllib.algorithm import init_ray

    source = Path(args.config) if args.config else ROOT / "experiments" / args.exp / "config.yaml"
    overrides = {"simulator": {"backend": "embedded"}}
    if args.runners is not None:
        overrides["training"] = {"num_env_runners": args.runners}
    config = load_config(source, overrides)
    if args.profile:
        config = apply_profile(config, args.profile, str(source), overrides)
    init_ray(ROOT)
    if args.update_profile:
        out = {"config": str(source), "profile": args.profile, **profile_updates(config, args.update_profile)}
        print(json.dumps(out) if args.json else out)
        ray.shutdown()
        return
    replays = args.replay.split(",") if args.replay else [None]
    rows = []
    for replay in replays:
        variant = config
        if replay:
            settings = dict(config.training.settings)
            settings["replay_buffer_config"] = {**settings.get("replay_buffer_config", {}), "type": replay}
            variant = config.model_copy(
                update={"training": config.training.model_copy(update={"settings": settings})}
            )
        row = measure(variant, args.warmup, args.iterations)
        row["replay"] = replay or config.training.settings.get("replay_buffer_config", {}).get("type")
        rows.append(row)
    for row in rows:
        row["speedup"] = round(row["env_steps_per_s"] / rows[0]["env_steps_per_s"], 2)
    tr = config.training
    out = {
        "config": str(source),
        "profile": args.profile,
        "cpus": os.cpu_count(),
        "num_env_runners": tr.num_env_runners,
        "envs_per_runner": tr.envs_per_runner,
        "settings": {k: v for k, v in tr.settings.items() if k != "replay_buffer_config"},
        "rows": rows,
    }
    print(json.dumps(out) if args.json else "\n".join(map(str, rows)))
    ray.shutdown()


if __name__ == "__main__":
    from carla_env.config import ConfigError

    try:
        main()
    except (ConfigError, ValueError) as e:  # bad input: a config, a replay type RLlib does not know
        print(str(e).strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
