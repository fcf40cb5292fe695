"""Env steps per second sampled through RLlib, per EnvRunner count, beside the one-core env ceiling.

    python bench/sampling_throughput.py --exp dqn --runners 1,2 --json
    python bench/sampling_throughput.py --exp ppo --runners 1,14 --envs-per-runner 8 --gpus-per-runner 0.05 --json
    python bench/sampling_throughput.py --exp ppo --runners 1 --profile --json   # and where a runner's time goes
    python bench/sampling_throughput.py --exp ppo --runners 1 --stock-connectors --json  # RLlib's pipelines

Sampling alone: each EnvRunner's own `sample()` (the experiment's EnvRunner: CarlaEnvRunner, its envs
stepping together with batched inference, on the GPU with --gpus-per-runner), all runners at once,
no learning and no episodes shipped back (only their step counts). env_ceiling_per_s is CarlaEnv.step
on one core (bench/env_throughput.py, route experiment of --ceiling-exp driven by the autopilot,
resets included); each row gives the steps/s per runner as a fraction of it, and the efficiency of
N runners against N times the first row's per-runner rate.
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


def sampled_steps(runner, num_timesteps: int) -> int:
    """One runner's sample(), counted where it ran (the episodes stay there)."""
    return sum(len(episode) for episode in runner.sample(num_timesteps=num_timesteps))


def runner_config(config, runners: int, envs: int, gpus: float, stock: bool):
    """The AlgorithmConfig with this runner layout; `stock`: RLlib's connector pipelines, not the lean ones."""
    from carla_env.rllib.algorithm import build_algo_config
    from carla_env.rllib.env_runner import StockConnectorsEnvRunner

    tr = config.training.model_copy(
        update={"num_env_runners": runners, "envs_per_runner": envs, "gpus_per_runner": gpus}
    )
    algo_config = build_algo_config(config.model_copy(update={"training": tr}))
    return algo_config.env_runners(env_runner_cls=StockConnectorsEnvRunner) if stock else algo_config


def measure(
    config, runners: int, envs: int, gpus: float, iterations: int, steps_per_call: int, stock: bool = False
) -> dict:
    algo = runner_config(config, runners, envs, gpus, stock).build_algo()
    group = algo.env_runner_group

    def sample_all() -> int:
        counts = group.foreach_env_runner(
            lambda r: sampled_steps(r, steps_per_call * envs), local_env_runner=False
        )
        return sum(counts)

    try:
        sample_all()  # warm-up: env creation, first resets, kernel compilation
        t0, steps = time.perf_counter(), 0
        for _ in range(iterations):
            steps += sample_all()
        elapsed = time.perf_counter() - t0
    finally:
        algo.stop()
    return {
        "runners": runners,
        "envs_per_runner": envs,
        "gpus_per_runner": gpus,
        "env_steps": int(steps),
        "seconds": round(elapsed, 1),
        "env_steps_per_s": round(steps / elapsed, 1),
        "per_runner_steps_per_s": round(steps / elapsed / runners, 1),
    }


# Where one runner's time goes: cumulative cProfile time of these functions (file, name), per env step.
PHASES = {
    "env_step": [("env.py", "step")],
    "env_reset": [("env.py", "reset")],
    "vector_env": [
        ("vector_env.py", "step"),
        ("sync_vector_env.py", "step"),
        ("dict_info_to_list.py", "step"),
    ],
    "module_forward": [("torch_rl_module.py", "forward_exploration")],
    "connectors": [("connector_pipeline_v2.py", "__call__"), ("connectors.py", "__call__")],
    "episodes": [("single_agent_episode.py", "add_env_step"), ("single_agent_episode.py", "add_env_reset")],
    "callbacks": [("single_agent_env_runner.py", "_make_on_episode_callback")],
    "sample_total": [("single_agent_env_runner.py", "_sample")],
}


def profile_runner(config, envs: int, gpus: float, steps_per_env: int, stock: bool = False) -> dict:
    """One EnvRunner in this process under cProfile: microseconds per env step by phase. The phases
    nest (vector_env holds env_step and env_reset; connectors and the module are beside it), and the
    profiler inflates Python-heavy parts more than torch or numpy calls."""
    import cProfile
    import pstats

    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    algo_config = runner_config(config, 0, envs, gpus, stock)
    runner_cls = algo_config.env_runner_cls or SingleAgentEnvRunner
    # As remote runner 1 of 1: index 0 (the local runner) never puts its module on a GPU.
    runner = runner_cls(config=algo_config, worker_index=1, num_workers=1)
    runner.sample(num_timesteps=50 * envs)  # warm-up
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    steps = sum(len(e) for e in runner.sample(num_timesteps=steps_per_env * envs))
    profiler.disable()
    elapsed = time.perf_counter() - t0
    runner.stop()
    cumulative: dict[tuple[str, str], float] = {}
    for (path, _, name), (_, _, _, cum, _) in pstats.Stats(profiler).stats.items():
        key = (os.path.basename(path), name)
        # The largest of same-named functions (the outermost, where they nest); our two lean pipelines'
        # __call__s are side by side, so summed.
        combine = (lambda a, b: a + b) if key == ("connectors.py", "__call__") else max
        cumulative[key] = combine(cumulative.get(key, 0.0), cum)
    us = {
        phase: round(1e6 * sum(cumulative.get(k, 0.0) for k in keys) / steps, 1)
        for phase, keys in PHASES.items()
    }
    return {
        "runner": runner_cls.__name__,
        "envs_per_runner": envs,
        "gpus_per_runner": gpus,
        "module_device": str(getattr(runner, "_device", "cpu")),
        "env_steps": steps,
        "env_steps_per_s_profiled": round(steps / elapsed, 1),
        "us_per_env_step": us,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="dqn", help="experiment folder under experiments/")
    p.add_argument("--runners", default="1,2", help="comma-separated EnvRunner counts")
    p.add_argument("--envs-per-runner", type=int, default=None, help="default: the experiment's config")
    p.add_argument("--gpus-per-runner", type=float, default=None, help="default: the experiment's config")
    p.add_argument("--iterations", type=int, default=3, help="timed sample() rounds per runner count")
    p.add_argument("--steps-per-call", type=int, default=200, help="env steps per env in one sample() round")
    p.add_argument("--ceiling-exp", default="ppo", help="experiment of the one-core env ceiling (autopilot)")
    p.add_argument("--ceiling-steps", type=int, default=2000, help="0: skip the ceiling")
    p.add_argument("--profile", action="store_true", help="also profile one in-process runner (cProfile)")
    p.add_argument(
        "--stock-connectors",
        action="store_true",
        help="RLlib's connector pipelines in the runners, not CarlaEnvRunner's lean ones (the before of an A/B)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import ray

    from carla_env.config import load_config
    from carla_env.rllib.algorithm import init_ray

    embedded = {"simulator": {"backend": "embedded"}}
    config = load_config(ROOT / "experiments" / args.exp / "config.yaml", embedded)
    envs = args.envs_per_runner or config.training.envs_per_runner
    gpus = config.training.gpus_per_runner if args.gpus_per_runner is None else args.gpus_per_runner
    out = {
        "exp": args.exp,
        "cpus": os.cpu_count(),
        "connectors": "stock" if args.stock_connectors else "lean",
    }
    if args.ceiling_steps:
        from bench.env_throughput import measure_env, one_core

        ceiling_config = load_config(ROOT / "experiments" / args.ceiling_exp / "config.yaml", embedded)
        with one_core():  # as env_throughput measures it
            env = measure_env(ceiling_config, args.ceiling_steps)
        out.update(ceiling_exp=args.ceiling_exp, env_ceiling_per_s=env["env_steps_per_s"])
    init_ray(ROOT)
    if args.profile:
        out["profile"] = profile_runner(config, envs, gpus, args.steps_per_call, args.stock_connectors)
    rows = [
        measure(config, int(k), envs, gpus, args.iterations, args.steps_per_call, args.stock_connectors)
        for k in args.runners.split(",")
    ]
    base = rows[0]["per_runner_steps_per_s"]
    for row in rows:
        row["efficiency_vs_linear"] = round(row["env_steps_per_s"] / (base * row["runners"]), 2)
        if "env_ceiling_per_s" in out:
            row["per_runner_fraction_of_ceiling"] = round(
                row["per_runner_steps_per_s"] / out["env_ceiling_per_s"], 2
            )
    out["rows"] = rows
    print(json.dumps(out) if args.json else "\n".join(str(r) for r in [out.get("env_ceiling_per_s"), *rows]))
    ray.shutdown()


if __name__ == "__main__":
    main()
