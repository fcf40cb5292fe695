"""`CarlaEnv.step` per second on one core, beside the bare tick and the BEV render, and where a step goes.

    python bench/env_throughput.py --exp ppo --steps 3000 --json

The experiment's config (packed BEV, route experiment, its traffic: 30 vehicles) on the embedded backend,
driven by the route autopilot (its own time excluded), resets included. Passes over the same seeds:
untimed-inside passes (--repeats, default 3) give env_steps_per_s, the median pass's (reset + step time
only; every pass's in env_steps_per_s_passes: on a VM one pass moved 15% between runs); then a pass
with a timer around each phase gives the breakdown, in microseconds per env step:

    tick        core.tick: dynamics, traffic, collisions, lights, event sensors' callbacks
    bev         the BEV sensor's read: scene from the world, render, pack
    sensors     the other sensors' reads (collision, lane invasion)
    driving     DrivingStateTracker.step: route progress, off-road, the step's events
    experiment  compute_action, get_observation, get_done_status, compute_reward
    metrics     DrivingMetrics.update
    reset       env.reset, spread over the steps (episodes end on collisions, route done, max_steps)
    env_other   the rest of CarlaEnv.step: info dicts, bookkeeping

tick_per_s and bev_per_s are what the tick and the BEV alone would allow (steps over their own time);
ceiling_per_s is tick and BEV together, the rate a step with no other work would reach.
env_steps_per_s_cpu_time: the same steps over this thread's CPU time, for a machine others load.

    python bench/env_throughput.py --exp ppo --steps 3000 --processes 1,8,14,16 --json

--processes: the machine's own scaling, no RLlib: N copies of the untimed pass at once, each pinned to
its own core, for each N; prints their total and mean env steps/s and the efficiency against N times
the first count's per-process rate (give 1 first) (what N EnvRunners could reach at best).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the experiment the config names ('module:Class') imports from here


class Timers:
    """Seconds per phase, from wrappers put around bound methods of one env's parts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)
        seconds = self.seconds

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - t0

        setattr(obj, method, timed)

    def instrument(self, env) -> None:
        """Wrap the parts that live for the whole env (the core, the experiment)."""
        self.wrap(env.core, "tick", "tick")
        for method in ("compute_action", "get_observation", "get_done_status", "compute_reward"):
            self.wrap(env.experiment, method, "experiment")

    def instrument_episode(self, env) -> None:
        """Wrap the parts a reset builds anew (sensors, the driving-state tracker, the metrics)."""
        from carla_env.sensors.factory import BirdviewSensor

        for sensor in env.sensors.values():
            self.wrap(sensor, "read", "bev" if isinstance(sensor, BirdviewSensor) else "sensors")
        self.wrap(env.driving, "step", "driving")
        self.wrap(env.metrics, "update", "metrics")


def drive(env, policy, steps: int, seed: int, timers: Timers | None = None) -> dict:
    """`steps` env steps under the autopilot; returns the env's own seconds (step + reset) and episodes."""
    env_seconds = 0.0
    step_seconds = 0.0
    reset_seconds = 0.0
    episodes = 0
    cpu = 0.0  # this thread's CPU seconds in the env: what a loaded machine does not inflate
    t0 = time.perf_counter()
    c0 = time.thread_time()
    env.reset(seed=seed)
    cpu += time.thread_time() - c0
    reset_seconds += time.perf_counter() - t0
    if timers is not None:
        timers.instrument(env)
        timers.instrument_episode(env)
    policy.reset(env, seed)
    obs = None
    for _ in range(steps):
        action = policy(obs, env)
        t0, c0 = time.perf_counter(), time.thread_time()
        obs, _, terminated, truncated, _ = env.step(action)
        step_seconds += time.perf_counter() - t0
        cpu += time.thread_time() - c0
        if terminated or truncated:
            episodes += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            env.reset()
            reset_seconds += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            policy.reset(env, seed)
            if timers is not None:
                timers.instrument_episode(env)
    env_seconds = step_seconds + reset_seconds
    return {
        "env_seconds": env_seconds,
        "step_seconds": step_seconds,
        "reset_seconds": reset_seconds,
        "cpu_seconds": cpu,
        "episodes": episodes,
    }


def measure_env(
    config, steps: int, warmup: int = 300, seed: int = 0, breakdown: bool = True, repeats: int = 1
) -> dict:
    """The env's one-core figures for `config` (an experiment with the [steer, acceleration] action);
    the untimed pass `repeats` times over the same seeds, its figures the median pass's."""
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import AutopilotPolicy

    env = CarlaEnv(config)
    policy = AutopilotPolicy(env)
    drive(env, policy, warmup, seed)
    passes = sorted(
        (drive(env, policy, steps, seed + 1) for _ in range(repeats)), key=lambda r: r["env_seconds"]
    )
    plain = passes[len(passes) // 2]
    every_pass = [round(steps / r["env_seconds"], 1) for r in passes]  # fastest first
    if not breakdown:
        env.close()
        return {
            "steps": steps,
            "episodes": plain["episodes"],
            "env_steps_per_s": round(steps / plain["env_seconds"], 1),
            "env_steps_per_s_passes": every_pass,
        }
    timers = Timers()
    env.close()
    env = CarlaEnv(config)  # a fresh env: the wrappers go on its new core
    policy = AutopilotPolicy(env)
    drive(env, policy, warmup, seed)
    timed = drive(env, policy, steps, seed + 1, timers)
    env.close()

    n = steps
    us = {phase: 1e6 * s / n for phase, s in timers.seconds.items()}
    accounted = sum(timers.seconds.values())
    us["reset"] = 1e6 * timed["reset_seconds"] / n
    us["env_other"] = 1e6 * (timed["step_seconds"] - accounted) / n
    order = ("tick", "bev", "sensors", "driving", "experiment", "metrics", "reset", "env_other")
    result = {
        "town": config.simulator.town,
        "vehicles": config.simulator.traffic.vehicles,
        "packed": bool(config.experiment.sensors["birdview"].packed),
        "steps": n,
        "episodes": plain["episodes"],
        "env_steps_per_s": n / plain["env_seconds"],
        "env_steps_per_s_passes": every_pass,
        "env_steps_per_s_no_resets": n / plain["step_seconds"],
        "env_steps_per_s_cpu_time": n / plain["cpu_seconds"],
        "tick_per_s": n / timers.seconds["tick"],
        "bev_per_s": n / timers.seconds["bev"],
        "ceiling_per_s": n / (timers.seconds["tick"] + timers.seconds["bev"]),
        "us_per_step": {k: round(us.get(k, 0.0), 1) for k in order},
        "us_per_step_total_timed": round(1e6 * timed["env_seconds"] / n, 1),
    }
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


@contextlib.contextmanager
def one_core(index: int = 0):
    """This process on its `index`-th allowed core (where the OS lets a process choose), then as before."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed:
        os.sched_setaffinity(0, {sorted(allowed)[index % len(allowed)]})
    try:
        yield
    finally:
        if allowed:
            os.sched_setaffinity(0, allowed)


def process_counts(text: str) -> list[int]:
    """--processes: positive integers, comma-separated."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give process counts as positive integers, e.g. 1,14,16")
    return counts


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive whole number")
    return int(text)


def scaling(args, counts: list[int]) -> list[dict]:
    """For each N: N children of this script at once, child i pinned to core i, seeds apart."""
    rows = []
    for n in counts:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--exp",
                    args.exp,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--seed",
                    str(args.seed + 1000 * i),
                    "--core",
                    str(i),
                    "--repeats",
                    str(args.repeats),
                    "--no-breakdown",
                    "--json",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        rates = []
        for child in children:
            out, _ = child.communicate()
            if child.returncode:
                raise SystemExit(f"a --processes child exited with {child.returncode}")
            rates.append(json.loads(out.strip().splitlines()[-1])["env_steps_per_s"])
        rows.append(
            {"processes": n, "total_per_s": round(sum(rates), 1), "mean_per_s": round(sum(rates) / n, 1)}
        )
    for row in rows:
        row["efficiency_vs_linear"] = round(row["mean_per_s"] / rows[0]["mean_per_s"], 3)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--exp", default="ppo", help="experiment folder under experiments/ (ppo: continuous actions)"
    )
    p.add_argument("--steps", type=int, default=3000, help="env steps per pass")
    p.add_argument("--warmup", type=int, default=300, help="untimed steps first (kernel compilation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="untimed passes; env_steps_per_s is the median's (one pass moved 15%% between runs on a VM)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument(
        "--processes",
        type=process_counts,
        help="comma-separated process counts: the untimed pass in N pinned processes at once",
    )
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)  # a --processes child's core
    p.add_argument("--no-breakdown", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.processes:
        result = {"exp": args.exp, "steps": args.steps, "processes": scaling(args, args.processes)}
        result.update({"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)})
        print(json.dumps(result) if args.json else "\n".join(f"{k:>28}: {v}" for k, v in result.items()))
        return
    from carla_env.config import load_config

    config = load_config(
        ROOT / "experiments" / args.exp / "config.yaml", {"simulator": {"backend": "embedded"}}
    )
    with one_core(args.core):
        measured = measure_env(
            config, args.steps, args.warmup, args.seed, breakdown=not args.no_breakdown, repeats=args.repeats
        )
        result = {"exp": args.exp, **measured}
    result.update({"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)})
    print(json.dumps(result) if args.json else "\n".join(f"{k:>28}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
