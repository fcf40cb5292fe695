"""Does it learn to drive, and how does sampling scale? One command, results in docs/results/.

    python bench/learning.py                       # everything: train ppo+dqn, evaluate, scale, report
    python bench/learning.py --phases train --algos ppo --minutes 20 --call-minutes 9
    python bench/learning.py --phases eval,scaling,report
    python bench/learning.py --phases train,eval --algos ppo --tag dagger --lr 5e-5 \
        --init-module runs/imitation/no_ego_history_dagger/checkpoint   # PPO from bench/imitation.py's module

Training runs on generated towns with background traffic (embedded backend), one town per env
runner; evaluation is on a held-out generated town (a grid seed never trained on), 50 episodes
per policy, with a random policy and the route autopilot (carla_env.agents) as baselines, all
scored by `carla_env.evaluate`.
Training is resumable: each phase call continues from runs/learning/<algo> until --minutes of
training wall time are spent, so a run can be split across calls with a time limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the experiments the configs name ('module:Class') and bench/ import from here

from carla_env.evaluate import HELD_OUT_TOWN  # noqa: E402  (bench/imitation.py imports it from here)

TRAIN_TOWNS = ["GridTown01", "GridTown02", "GridTown04", "GridTown05"]
VEHICLES = 30
# Settings for a 16-CPU, 1-GPU machine on top of the experiment's config.yaml.
# Runners step 4 envs each with one batched inference, on their own core: with the 64 px BEV, 14 runners
# of 8 envs sharing the GPU sampled less than on their CPUs (docs/results, "A runner profiled on the GPU
# machine"); 4 envs a runner on the CPU is not measured.
GPU_RUNNERS = {"envs_per_runner": 4, "gpus_per_runner": 0.0}
GPU_SETTINGS = {
    "ppo": {"train_batch_size_per_learner": 8192, "minibatch_size": 1024, "num_epochs": 4},
    "dqn": {"training_intensity": 8, "train_batch_size_per_learner": 128},
}
TARGETS = {"route_completion": 0.90, "collisions_per_km": 0.1, "lane_invasions_per_km": 1.0}


def experiment_config(
    algo: str, town, runners: int = 0, birdview: dict | None = None, options: dict | None = None
):
    """The experiment's config.yaml on `town` with this bench's traffic; `birdview` overrides BEV keys,
    `options` the experiment's reward options."""
    import torch

    from carla_env.config import load_config

    training = {"num_env_runners": runners}
    if runners and torch.cuda.is_available():
        training.update(GPU_RUNNERS)
    overrides = {
        "simulator": {"backend": "embedded", "town": town, "traffic": {"vehicles": VEHICLES}},
        "training": training,
    }
    if birdview:
        overrides.setdefault("experiment", {})["sensors"] = {"birdview": birdview}
    if options:
        overrides.setdefault("experiment", {})["options"] = options
    return load_config(ROOT / "experiments" / algo / "config.yaml", overrides)


# ---------------------------------------------------------------------------------------- training
def run_name(algo: str, tag: str) -> str:
    """A run's folder under --runs and its row in the results: `ppo`, or `ppo_<tag>` for a variant."""
    return f"{algo}_{tag}" if tag else algo


def train(
    algo: str,
    runs: Path,
    minutes: float,
    call_minutes: float,
    runners: int,
    batch: int | None,
    init_module: Path | None = None,
    tag: str = "",
    lr: float | None = None,
    options: dict | None = None,
) -> None:
    import ray

    from carla_env.rllib.algorithm import build_algo_config, init_ray, start_from_module
    from carla_env.rllib.checkpoint import check_init_module, module_dir

    config = experiment_config(algo, TRAIN_TOWNS, runners, options=options)
    tr = config.training
    settings = {**tr.settings, **GPU_SETTINGS[algo]}
    if batch:
        settings["train_batch_size_per_learner"] = batch
        if algo == "ppo":
            settings["minibatch_size"] = min(settings["minibatch_size"], batch)
    if lr:
        settings["lr"] = lr
    config = config.model_copy(update={"training": tr.model_copy(update={"settings": settings})})
    run_dir = runs.resolve() / run_name(algo, tag)  # RLlib reads a relative path as a URI
    state_file = run_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"wall_s": 0.0, "curve": []}
    state.update({"settings": {"lr": settings.get("lr")}, "options": options or {}})
    if state["wall_s"] >= minutes * 60:
        print(f"{algo}: {state['wall_s']:.0f} s of training already done", flush=True)
        return
    resume = (run_dir / "checkpoint").exists()
    if init_module and resume:
        print(f"{run_dir.name}: resuming its checkpoint; --init-module applies to a new run only", flush=True)
    elif init_module:
        check_init_module(init_module, config)
    init_ray(ROOT)
    algorithm = build_algo_config(config).build_algo()
    if resume:
        algorithm.restore_from_path(str(run_dir / "checkpoint"))
    elif init_module:
        start_from_module(str(module_dir(init_module)), algorithm=algorithm)
        state["init_module"] = str(init_module)
    call_end = time.monotonic() + call_minutes * 60
    try:
        while True:  # at least one iteration per call
            t0 = time.monotonic()
            result = algorithm.train()
            state["wall_s"] += time.monotonic() - t0
            env = result.get("env_runners", {})
            row = {
                "iteration": len(state["curve"]) + 1,
                "wall_s": round(state["wall_s"], 1),
                "env_steps": int(result["num_env_steps_sampled_lifetime"]),
                **{k: env.get(k) for k in ("episode_return_mean", "route_completion", "collisions_per_km")},
            }
            state["curve"].append(row)
            print(json.dumps(row), flush=True)
            if state["wall_s"] >= minutes * 60 or time.monotonic() >= call_end:
                break
            if row["iteration"] % 5 == 0:
                _save(algorithm, run_dir, state)
        _save(algorithm, run_dir, state)
    finally:
        algorithm.stop()
        ray.shutdown()


def _save(algorithm, run_dir: Path, state: dict) -> None:
    """Checkpoint and state together, each replaced atomically (a kill leaves the previous pair)."""
    import shutil

    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algorithm.save_to_path(str(tmp))
    old = run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if (run_dir / "checkpoint").exists():
        os.replace(run_dir / "checkpoint", old)
    os.replace(tmp, run_dir / "checkpoint")
    (run_dir / "state.json.tmp").write_text(json.dumps(state))
    os.replace(run_dir / "state.json.tmp", run_dir / "state.json")
    shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------- evaluation
def evaluate(
    policies: dict[str, str | None], episodes: int, workers: int, birdview: dict | None = None
) -> dict:
    """Each policy (name: checkpoint, or None for 'random'/'autopilot') on the held-out town, over the
    same `episodes` seeds: the same routes and traffic for every policy."""
    from carla_env.evaluate import evaluate as score

    seeds = [10_000 + k for k in range(episodes)]
    out = {}
    for name, checkpoint in policies.items():
        # baselines drive the PPO experiment's action space
        algo = "dqn" if name == "dqn" or name.startswith("dqn_") else "ppo"
        config = experiment_config(algo, HELD_OUT_TOWN, birdview=birdview)
        t0 = time.monotonic()
        out[name] = score(config, checkpoint or name, seeds, workers=workers)["overall"]
        print(f"eval {name}: {json.dumps(out[name])} ({time.monotonic() - t0:.0f} s)", flush=True)
    return out


# ----------------------------------------------------------------------------------------- scaling
def scaling(counts: list[int], iterations: int) -> list[dict]:
    import ray

    from bench.sampling_throughput import measure
    from carla_env.rllib.algorithm import init_ray

    init_ray(ROOT)
    rows = []
    for k in counts:
        rows.append(measure(experiment_config("dqn", TRAIN_TOWNS, k), k, iterations))
        print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    base = rows[0]["env_steps_per_s"] / rows[0]["runners"]
    for row in rows:
        row["efficiency_vs_linear"] = round(row["env_steps_per_s"] / (base * row["runners"]), 2)
    return rows


# ------------------------------------------------------------------------------------------ report
def report(out: Path, runs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((out / "learning.json").read_text()) if (out / "learning.json").exists() else {}
    curves = results.setdefault("curves", {})  # runs measured elsewhere keep their curves
    for state in sorted(runs.glob("*/state.json")):  # ppo, dqn, and any variant run beside them
        curves[state.parent.name] = json.loads(state.read_text())["curve"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for algo, curve in curves.items():
        minutes = [r["wall_s"] / 60 for r in curve]
        axes[0].plot(minutes, [r["route_completion"] or math.nan for r in curve], label=algo)
        axes[1].plot(minutes, [r["episode_return_mean"] or math.nan for r in curve], label=algo)
    axes[0].axhline(TARGETS["route_completion"], color="grey", ls="--", lw=1, label="target")
    axes[0].set(xlabel="training wall time (min)", ylabel="route completion (training episodes)", ylim=(0, 1))
    axes[1].set(xlabel="training wall time (min)", ylabel="episode return")
    for ax in axes:
        ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(f"Training on {', '.join(TRAIN_TOWNS)} with {VEHICLES} vehicles (embedded backend)")
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    (out / "learning.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())


def meets_targets(m: dict) -> bool:
    return (
        m["route_completion"] >= TARGETS["route_completion"]
        and m["collisions_per_km"] <= TARGETS["collisions_per_km"]
        and m["lane_invasions_per_km"] <= TARGETS["lane_invasions_per_km"]
    )


def markdown(results: dict) -> str:
    lines = [
        f"Held-out town `{HELD_OUT_TOWN}`, {VEHICLES} vehicles; targets: "
        f"route completion >= {TARGETS['route_completion']:.0%}, collisions <= "
        f"{TARGETS['collisions_per_km']}/km, lane invasions <= {TARGETS['lane_invasions_per_km']}/km.",
        "",
    ]
    machine = results.get("machine", {})
    if machine:
        lines += [f"Latest run's machine: {machine.get('cpus')} CPUs, {machine.get('gpu') or 'no GPU'}.", ""]
    evaluation = results.get("evaluation", {})
    if evaluation:
        lines += [
            "| policy | episodes | route completion | collisions/km | lane invasions/km | driving score | "
            "training wall time | env steps | targets met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in evaluation.items():
            curve = results.get("curves", {}).get(name) or [{}]
            wall = f"{curve[-1]['wall_s'] / 60:.1f} min" if "wall_s" in curve[-1] else "-"
            steps = f"{curve[-1]['env_steps']:,}" if "env_steps" in curve[-1] else "-"
            lines.append(
                f"| {name} | {m['episodes']} | {m['route_completion']:.1%} | {m['collisions_per_km']:.2f} | "
                f"{m['lane_invasions_per_km']:.2f} | {m['driving_score']:.2f} | {wall} | {steps} | "
                f"{'yes' if meets_targets(m) else 'no'} |"
            )
        lines.append("")
    lines += [f"- {note}" for note in results.get("notes", [])]  # provenance recorded in learning.json
    if results.get("notes"):
        lines.append("")
    rows = results.get("scaling", [])
    if rows:
        lines += ["| EnvRunners | env steps/s | efficiency vs linear |", "|---|---|---|"]
        lines += [
            f"| {r['runners']} | {r['env_steps_per_s']:.0f} | {r['efficiency_vs_linear']:.2f} |" for r in rows
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default="train,eval,scaling,report")
    p.add_argument("--algos", default="ppo,dqn")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall time per algorithm")
    p.add_argument(
        "--call-minutes", type=float, default=math.inf, help="stop this call's training after this"
    )
    p.add_argument("--runners", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--train-batch", type=int, help="override train_batch_size_per_learner (smoke runs)")
    p.add_argument(
        "--init-module", type=Path, help="start training from this checkpoint's policy (bench/imitation.py's)"
    )
    p.add_argument("--tag", default="", help="a variant run: trained in runs/<algo>_<tag>, reported as such")
    p.add_argument("--lr", type=float, help="override the learning rate (fine-tuning from --init-module)")
    p.add_argument(
        "--reward-options",
        type=json.loads,
        default={},
        help="JSON of reward options for training, e.g. '{\"speeding_penalty\": 0.05}' (experiments/driving.py)",
    )
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--scaling", default="1,2,4,8,14", help="EnvRunner counts for the scaling table")
    p.add_argument("--scaling-iterations", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning")
    args = p.parse_args()
    phases = set(args.phases.split(","))
    if phases - {"train", "eval", "scaling", "report"}:
        p.error(f"--phases: unknown {sorted(phases - {'train', 'eval', 'scaling', 'report'})}")
    algos = [a for a in args.algos.split(",") if a]
    if set(algos) - {"ppo", "dqn"}:
        p.error("--algos: choose from ppo, dqn")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "learning.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if phases - {"report"}:  # a report alone keeps the machine the figures were measured on
        import torch

        results["machine"] = {
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    if "train" in phases:
        from carla_env.config import ConfigError

        for algo in algos:
            try:
                train(
                    algo,
                    args.runs,
                    args.minutes,
                    args.call_minutes,
                    args.runners,
                    args.train_batch,
                    args.init_module,
                    args.tag,
                    args.lr,
                    args.reward_options,
                )
            except ConfigError as e:
                print(e, file=sys.stderr)
                return 2
    if "eval" in phases:
        policies = {"random": None, "autopilot": None}
        for algo in algos:
            run_dir = args.runs / run_name(algo, args.tag)
            if (run_dir / "checkpoint").exists():
                policies[run_dir.name] = str(run_dir / "checkpoint")
                start = json.loads((run_dir / "state.json").read_text()).get("init_module")
                if start and Path(start).exists():  # the module it started from, scored alike
                    policies[f"{run_dir.name}_start"] = start
        workers = max(1, min(args.eval_episodes, (os.cpu_count() or 2)))
        # merged: rows of runs evaluated in earlier calls stay
        results.setdefault("evaluation", {}).update(evaluate(policies, args.eval_episodes, workers))
    if "scaling" in phases:
        results["scaling"] = scaling([int(k) for k in args.scaling.split(",")], args.scaling_iterations)
    results_file.write_text(json.dumps(results, indent=2))
    if "report" in phases:
        report(args.out, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
