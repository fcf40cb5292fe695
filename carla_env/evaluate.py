"""Evaluation: the one episode loop, and a policy scored on one or several towns.

    python -m carla_env.evaluate --policy autopilot|random|CHECKPOINT [--config C] [--towns T1,T2|all]
                                 [--maps DIR] [--episodes N] [--seed S] [--workers W] [--max-steps K]
                                 [--json out.json] [--failure-videos DIR]

The policy is `autopilot` (the reference route autopilot, carla_env.agents), `random` (uniform actions,
seeded per episode) or a checkpoint of train.py (a checkpoint folder, or a run folder: its newest; the
config saved with the run is the default --config). Episode k on every town is seeded S + k, so two
policies, or one policy before and after a change, drive the same routes among the same traffic.
Prints a row per town and overall, and on which towns the targets are met (route completion >= 90%,
<= 0.1 collisions/km, <= 0.05 pedestrian collisions/km, <= 1 lane invasion/km, no red-light run);
--json writes it with every episode's figures. `--towns all` is the held-out generated town and the
real CARLA towns (Town01, Town02, Town04, Town10HD) from --maps or $CARLA_ROOT, 50 episodes each unless
--episodes says otherwise; a real town found in neither is skipped with a line saying so.
--failure-videos DIR writes the BEV of each episode that misses a target to DIR/<town>_<seed>_<why>.mp4
(why: collision, pedestrian, red_light, lane_invasion, incomplete: under 90% of its route). Exit 2 on
bad input.

infer.py, bench/learning.py and bench/imitation.py drive their episodes through `run_episode`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from carla_env.config import Config, ConfigError, deep_merge, load_config, validate_config
from carla_env.maps.town import TownError, resolve_town

NAMED_POLICIES = ("autopilot", "random")
# The figures of the summary, in the order the table shows them.
SUMMARY_KEYS = (
    "episodes",
    "route_completion",
    "collisions_per_km",
    "pedestrian_collisions_per_km",
    "lane_invasions_per_km",
    "red_light_runs_per_km",
    "route_seconds",
    "mean_speed",
    "steer_change_per_s",
    "driving_score",
    "km_driven",
)
# The targets a policy must meet on every town: (summary key, "min" or "max", bound, what it means).
TARGETS = (
    ("route_completion", "min", 0.90, "route completion >= 90%"),
    ("collisions_per_km", "max", 0.1, "<= 0.1 collisions/km"),
    ("pedestrian_collisions_per_km", "max", 0.05, "<= 0.05 pedestrian collisions/km"),
    ("lane_invasions_per_km", "max", 1.0, "<= 1 lane invasion/km"),
    ("red_light_runs_per_km", "max", 0.0, "no red-light run"),
)
ROUTE_TARGET = next(bound for key, _, bound, _ in TARGETS if key == "route_completion")
ALL_TOWNS = "all"  # --towns all: the held-out generated town and the real CARLA towns
HELD_OUT_TOWN = "grid:seed=101,columns=5,rows=5"  # a layout no training town shares (bench/ scores on it too)
REAL_TOWNS = ("Town01", "Town02", "Town04", "Town10HD")
DEFAULT_MAPS = Path("../shared/maps")  # the real towns' .xodr beside the repo (never inside it)
EPISODES, ALL_TOWNS_EPISODES = 10, 50  # --episodes' default, and its default with --towns all


class EvaluationError(ValueError):
    """Bad input to an evaluation; str(e) is the one-line message for the user."""


# ---------------------------------------------------------------------------------------- policies
class AutopilotPolicy:
    """The reference route autopilot as a [steer, acceleration] action on the experiment's route."""

    def __init__(self, env) -> None:
        from carla_env.agents import RouteAutopilot

        space = env.action_space
        if not (getattr(space, "shape", None) == (2,) and space.dtype == np.float32):
            raise EvaluationError(
                f"--policy autopilot drives a continuous [steer, acceleration] action; experiment "
                f"{env.config.experiment.type} takes {space}: use a config with that action (experiments/ppo)"
            )
        self.autopilot = RouteAutopilot()

    def reset(self, env, seed: int) -> None:
        self.autopilot.reset()

    def __call__(self, obs, env):
        return self.autopilot.action(env.core.hero, env.experiment.route, env.config.simulator.timestep)


class RandomPolicy:
    """Uniform actions from a generator seeded with the episode's seed."""

    def __init__(self, env) -> None:
        self.space = env.action_space
        self.rng = np.random.default_rng(0)

    def reset(self, env, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs, env):
        if hasattr(self.space, "n"):
            return int(self.rng.integers(self.space.n))
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


class CheckpointPolicy:
    """A trained RLModule's greedy action (torch only: no Ray runtime is started)."""

    def __init__(self, env, checkpoint: Path, module=None) -> None:
        from carla_env.rllib.checkpoint import load_policy, space_mismatch

        self.checkpoint = checkpoint
        self.module = module or load_policy(checkpoint)
        mismatch = space_mismatch(checkpoint, self.module.module, env)
        if mismatch:
            raise EvaluationError(f"{mismatch}; pass the --config it was trained with")

    def reset(self, env, seed: int) -> None:
        pass

    def __call__(self, obs, env):
        return self.module(obs)


def make_policy(policy: str, env):
    """'autopilot', 'random', or a checkpoint (folder or run folder) as a policy for `env`."""
    if policy == "autopilot":
        return AutopilotPolicy(env)
    if policy == "random":
        return RandomPolicy(env)
    from carla_env.rllib.checkpoint import resolve_checkpoint

    return CheckpointPolicy(env, resolve_checkpoint(Path(policy)))


# ------------------------------------------------------------------------------------ episode loop
def run_episode(env, policy, seed: int, on_step: Callable | None = None) -> dict:
    """Drive one episode seeded `seed`; its row: seed, return, steps and the env's numeric info at the end.

    `on_step(env, obs, info)` runs after every step (a video frame, a sample); a truthy return ends the
    episode early, and the row then says `"stopped": True`."""
    obs, _ = env.reset(seed=seed)
    policy.reset(env, seed)
    done, ret, steps, info, stopped = False, 0.0, 0, {}, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs, env))
        ret += reward
        steps += 1
        done = terminated or truncated
        if on_step is not None and on_step(env, obs, info) and not done:
            stopped = True
            break
    row = {"seed": seed, "return": ret, "steps": steps}
    row.update({k: float(v) for k, v in info.items() if isinstance(v, (int, float))})
    return {**row, "stopped": True} if stopped else row


def summarise(rows: Sequence[dict]) -> dict:
    """Means per episode; event rates over the total distance driven (not a mean of per-episode rates)."""
    km = sum(r["distance_m"] for r in rows) / 1000.0
    summary = {
        "episodes": len(rows),
        "route_completion": sum(r["route_completion"] for r in rows) / len(rows),
        "collisions_per_km": sum(r["collisions"] for r in rows) / max(km, 1e-9),
        "pedestrian_collisions_per_km": sum(r.get("pedestrian_collisions", 0.0) for r in rows)
        / max(km, 1e-9),
        "lane_invasions_per_km": sum(r["lane_invasions"] for r in rows) / max(km, 1e-9),
        "red_light_runs_per_km": sum(r["red_light_runs"] for r in rows) / max(km, 1e-9),
        "route_seconds": sum(r["route_seconds"] for r in rows) / len(rows),
        "driving_score": sum(r["driving_score"] for r in rows) / len(rows),
        "km_driven": km,
        "mean_speed": sum(r["mean_speed"] for r in rows) / len(rows),
        # Over all the time driven; rows written before the figure existed count as 0.
        "steer_change_per_s": sum(r.get("steer_change", 0.0) for r in rows)
        / max(sum(r["route_seconds"] for r in rows), 1e-9),
    }
    summary["targets_missed"] = missed_targets(summary)
    return summary


def episode_failures(row: dict) -> list[str]:
    """What makes one episode miss the targets: its events, and a route left under ROUTE_TARGET done."""
    pedestrians = row.get("pedestrian_collisions", 0.0)
    why = {
        "collision": row["collisions"] > pedestrians,
        "pedestrian": pedestrians > 0,
        "red_light": row["red_light_runs"] > 0,
        "lane_invasion": row["lane_invasions"] > 0,
        "incomplete": row["route_completion"] < ROUTE_TARGET,
    }
    return [name for name, missed in why.items() if missed]


def file_label(town: str) -> str:
    """A town's label as a file name piece: 'grid:seed=101,columns=5' -> 'grid_seed-101_columns-5'."""
    return town.replace(":", "_").replace(",", "_").replace("=", "-").replace("/", "_")


def missed_targets(summary: dict) -> list[str]:
    """The TARGETS a summary misses, as their descriptions (empty: all met)."""
    return [
        text
        for key, kind, bound, text in TARGETS
        if (summary[key] < bound if kind == "min" else summary[key] > bound)
    ]


# -------------------------------------------------------------------------------------- evaluation
def town_label(town: str) -> str:
    """How a town is named in tables and JSON: an .xodr path by its file's stem (Town10HD)."""
    return Path(town).stem if town.endswith(".xodr") else town


def all_towns(maps: Path = DEFAULT_MAPS, log: Callable[[str], None] | None = None) -> list[str]:
    """--towns all: the held-out generated town, then each real town from `maps` (NAME.xodr) or, failing
    that, from $CARLA_ROOT; a real town in neither is left out, and `log` says so."""
    towns = [HELD_OUT_TOWN]
    for name in REAL_TOWNS:
        path = maps / f"{name}.xodr"
        if path.is_file():
            towns.append(str(path))
            continue
        try:
            resolve_town(name)
        except TownError:
            if log:
                log(
                    f"{name}: skipped: no {path} and not in $CARLA_ROOT; pass --maps with the folder of "
                    f"its .xodr or set CARLA_ROOT to a CARLA install"
                )
            continue
        towns.append(name)
    return towns


def town_configs(config: Config, towns: Sequence[str] | None) -> dict[str, Config]:
    """The config on each town, by its label (validated: an unknown town is a ConfigError naming
    simulator.town)."""
    if not towns:
        towns = [config.simulator.town] if isinstance(config.simulator.town, str) else config.simulator.town
    data = config.model_dump()
    return {
        town_label(town): validate_config(deep_merge(data, {"simulator": {"town": town}}), f"--towns {town}")
        for town in dict.fromkeys(towns)
    }


def check_policy(policy: str, config: Config) -> None:
    """Raise EvaluationError/CheckpointError now, in this process, if `policy` cannot drive `config`."""
    from carla_env.env import CarlaEnv

    env = CarlaEnv(config)  # spaces only: no world is built before reset
    make_policy(policy, env)


def env_in_slot(config: Config, slot: int):
    """The env as the `slot`-th on this machine: on the CARLA backend its own server ports, as RLlib's
    runner `slot` gets (RLlib's EnvContext carries the index the env reads)."""
    from carla_env.env import CarlaEnv

    if slot == 0:
        return CarlaEnv(config)
    from ray.rllib.env.env_context import EnvContext

    return CarlaEnv(EnvContext(config.model_dump(), worker_index=slot, num_workers=0, vector_index=0))


def _drive(
    config: Config,
    policy: str,
    seeds: Sequence[int],
    slot: int = 0,
    threads: int | None = None,
    videos: Path | None = None,
    town: str = "",
) -> list[dict]:
    """Episodes `seeds` of one town in one env (a worker process's job, or the caller's); with `videos`,
    the BEV of each episode that misses a target goes to videos/<town>_<seed>_<why>.mp4 (its row's
    "video")."""
    if threads is not None and policy not in NAMED_POLICIES:
        import torch

        torch.set_num_threads(threads)  # one core per worker
    env = env_in_slot(config, slot)
    rows = []
    try:
        act = make_policy(policy, env)
        for seed in seeds:
            frames: list[np.ndarray] = []  # the small native BEV frames; scaled up only for a failure

            def keep(env, obs, info, frames=frames) -> None:
                frame = env.render()
                if frame is not None:
                    frames.append(frame)

            row = run_episode(env, act, seed, on_step=keep if videos is not None else None)
            why = episode_failures(row)
            if videos is not None and why and frames:
                from carla_env.video import Mp4Writer

                path = videos / f"{file_label(town)}_{seed}_{'+'.join(why)}.mp4"
                with Mp4Writer(path, 1.0 / config.simulator.timestep) as writer:
                    for frame in frames:
                        writer.write(frame)
                row["video"] = str(path)
            rows.append(row)
        return rows
    finally:
        env.close()


def evaluate(
    config: Config,
    policy: str,
    seeds: Sequence[int],
    towns: Sequence[str] | None = None,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
    failure_videos: Path | None = None,
) -> dict:
    """Score `policy` on every town (default: the config's) over the same `seeds`, in `workers` processes;
    with `failure_videos`, a BEV video of each episode that misses a target goes there (see _drive).

    Returns {"policy", "seeds", "towns": {town: summary}, "overall": summary, "targets_met_on_every_town",
    "episodes": rows}; a summary's "targets_missed" lists the TARGETS it misses."""
    configs = town_configs(config, towns)
    check_policy(policy, next(iter(configs.values())))
    jobs = [
        (town, seeds[k::workers]) for town in configs for k in range(max(workers, 1)) if seeds[k::workers]
    ]
    rows: dict[str, list[dict]] = {town: [] for town in configs}
    if workers <= 1:
        for town, part in jobs:
            drove = _drive(configs[town], policy, part, videos=failure_videos, town=town)
            rows[town] += [{"town": town, **r} for r in drove]
            if log:
                log(f"{town}: {len(rows[town])}/{len(seeds)} episodes")
    else:
        # spawn: a worker never inherits a parent's torch/OpenMP threads mid-state (fork can hang there)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            futures = [
                (town, pool.submit(_drive, configs[town], policy, part, slot, 1, failure_videos, town))
                for slot, (town, part) in enumerate(jobs)
            ]
            for town, future in futures:
                rows[town] += [{"town": town, **r} for r in future.result()]
                if log:
                    log(f"{town}: {len(rows[town])}/{len(seeds)} episodes")
    for town in rows:
        rows[town].sort(key=lambda r: r["seed"])
    every = [r for town in configs for r in rows[town]]
    per_town = {town: summarise(rows[town]) for town in configs}
    return {
        "policy": policy,
        "seeds": list(seeds),
        "towns": per_town,
        "overall": summarise(every),
        "targets_met_on_every_town": not any(s["targets_missed"] for s in per_town.values()),
        "episodes": every,
    }


def table(result: dict) -> str:
    """The summary per town and overall, one line each, whether each town meets the targets, and a
    last line saying where they are met."""
    head = (
        "town",
        "episodes",
        "route",
        "coll/km",
        "ped/km",
        "inv/km",
        "red/km",
        "route s",
        "speed m/s",
        "steer/s",
    )
    head += ("score", "km", "targets")
    width = max(len(t) for t in [*result["towns"], "overall", "town"])
    lines = [f"{head[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in head[1:])]
    for town, s in [*result["towns"].items(), ("overall", result["overall"])]:
        values = [f"{s['episodes']:>9d}", f"{s['route_completion']:>9.1%}"]
        values += [f"{s[k]:>9.3f}" for k in SUMMARY_KEYS[2:]]
        values.append(f"{'missed' if s['targets_missed'] else 'met':>9}")
        lines.append(f"{town:<{width}}  " + "  ".join(values))
    missed = {town: s["targets_missed"] for town, s in result["towns"].items() if s["targets_missed"]}
    targets = ", ".join(text for *_, text in TARGETS)
    if not missed:
        lines.append(f"targets ({targets}) met on every town")
    else:
        where = "; ".join(f"{town}: {', '.join(m)}" for town, m in missed.items())
        lines.append(f"targets ({targets}) missed on {len(missed)} of {len(result['towns'])} towns: {where}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- CLI
def split_towns(text: str) -> list[str]:
    """'GridTown01,grid:seed=101,columns=5,rows=5' -> two towns: a `key=value` piece continues the
    previous town's parameters (generated towns take comma-separated parameters)."""
    towns: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if towns and "=" in piece and ":" not in piece:
            towns[-1] += "," + piece
        else:
            towns.append(piece)
    return towns


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the usage too: one line is the contract
        self.exit(2, f"{self.prog}: {message}\n")


def parse_args(argv):
    p = _OneLineParser(
        prog="python -m carla_env.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, help="autopilot, random, or a checkpoint / run folder")
    p.add_argument("--config", type=Path, help="experiment config (default for a checkpoint: its run's)")
    p.add_argument(
        "--towns",
        type=split_towns,
        help=f"comma-separated towns (default: the config's), or '{ALL_TOWNS}': {HELD_OUT_TOWN} and "
        f"{', '.join(REAL_TOWNS)}",
    )
    p.add_argument(
        "--maps",
        type=Path,
        default=DEFAULT_MAPS,
        help=f"folder of the real towns' .xodr files for --towns {ALL_TOWNS} (default {DEFAULT_MAPS}; "
        "a town not there comes from $CARLA_ROOT)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        help=f"episodes per town (default {EPISODES}, {ALL_TOWNS_EPISODES} with --towns {ALL_TOWNS})",
    )
    p.add_argument("--seed", type=int, default=10_000, help="episode k is seeded SEED + k")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--max-steps", type=int, help="override experiment.max_steps")
    p.add_argument("--json", type=Path, help="write the summary and every episode's figures here")
    p.add_argument(
        "--failure-videos",
        type=Path,
        metavar="DIR",
        help="write the BEV of each episode that misses a target to DIR/<town>_<seed>_<why>.mp4",
    )
    return p.parse_args(argv)


def writable_folder(path: Path) -> str | None:
    """None if `path` is (or now is) a folder this process can write files in; else why not."""
    if path.exists() and not path.is_dir():
        return "a file is there; give a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write there ({e.strerror or e}); give a folder you can write to"
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    every_town = args.towns == [ALL_TOWNS]
    if args.episodes is None:
        args.episodes = ALL_TOWNS_EPISODES if every_town else EPISODES
    if args.episodes < 1 or args.workers < 1:
        print("--episodes and --workers must be >= 1", file=sys.stderr)
        return 2
    if args.failure_videos is not None:
        problem = writable_folder(args.failure_videos)
        if problem:
            print(f"--failure-videos {args.failure_videos}: {problem}", file=sys.stderr)
            return 2
    from carla_env.rllib.checkpoint import CheckpointError, find_config, resolve_checkpoint

    policy = args.policy
    try:
        if policy not in NAMED_POLICIES:
            if not Path(policy).exists():
                raise EvaluationError(
                    f"--policy {policy}: not 'autopilot', 'random' or an existing checkpoint or run folder"
                )
            policy = str(resolve_checkpoint(Path(policy)))
        if args.config is None and policy in NAMED_POLICIES:
            raise EvaluationError(
                f"--policy {policy} needs --config: an experiment's config.yaml, e.g. experiments/ppo/config.yaml"
            )
        overrides = {"experiment": {"max_steps": args.max_steps}} if args.max_steps is not None else None
        config = load_config(args.config or find_config(Path(policy)), overrides)
        seeds = [args.seed + k for k in range(args.episodes)]
        towns = all_towns(args.maps, _stderr) if every_town else args.towns
        result = evaluate(
            config, policy, seeds, towns, args.workers, log=_stderr, failure_videos=args.failure_videos
        )
    except (EvaluationError, CheckpointError, ConfigError) as e:
        print(e, file=sys.stderr)
        return 2
    print(f"policy: {policy}\n{table(result)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)  # never a half-written summary
    if args.failure_videos is not None:
        videos = [r for r in result["episodes"] if "video" in r]
        print(
            f"{len(videos)} of {len(result['episodes'])} episodes missed a target: their videos are in {args.failure_videos}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
