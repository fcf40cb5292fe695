"""Env steps per second sampled through RLlib, per EnvRunner count.

    python bench/sampling_throughput.py --exp dqn --runners 1,2 --json

Learning is held off (learning starts after the run), so the figure is sampling alone: env step,
BEV render and packing, module inference, episode bookkeeping.
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


def measure(config, runners: int, iterations: int) -> dict:
    from carla_env.rllib.algorithm import build_algo_config

    tr = config.training.model_copy(update={"num_env_runners": runners})
    settings = {**tr.settings, "num_steps_sampled_before_learning_starts": 10**9}
    cfg = config.model_copy(update={"training": tr.model_copy(update={"settings": settings})})
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.train()  # warm-up: env creation, first resets, kernel compilation
        t0, steps0 = time.perf_counter(), _sampled(algo)
        for _ in range(iterations):
            result = algo.train()
        elapsed = time.perf_counter() - t0
        steps = result["num_env_steps_sampled_lifetime"] - steps0
    finally:
        algo.stop()
    return {
        "runners": runners,
        "env_steps": int(steps),
        "seconds": round(elapsed, 1),
        "env_steps_per_s": round(steps / elapsed, 1),
    }


def _sampled(algo) -> float:
    return algo.metrics.peek("num_env_steps_sampled_lifetime", default=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="dqn", help="experiment folder under experiments/")
    p.add_argument("--runners", default="1,2", help="comma-separated EnvRunner counts")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per runner count")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import ray

    from carla_env.config import load_config
    from carla_env.rllib.algorithm import init_ray

    config = load_config(
        ROOT / "experiments" / args.exp / "config.yaml", {"simulator": {"backend": "embedded"}}
    )
    init_ray(ROOT)
    rows = [measure(config, int(k), args.iterations) for k in args.runners.split(",")]
    base = rows[0]["env_steps_per_s"] / rows[0]["runners"]
    for row in rows:
        row["efficiency_vs_linear"] = round(row["env_steps_per_s"] / (base * row["runners"]), 2)
    out = {"exp": args.exp, "cpus": os.cpu_count(), "rows": rows}
    print(json.dumps(out) if args.json else "\n".join(str(r) for r in rows))
    ray.shutdown()


if __name__ == "__main__":
    main()
