"""Can a policy drive from this observation? Behaviour cloning of the reference autopilot into the
PPO experiment's RLModule, then DAgger, evaluated greedily on the held-out town (the same 50 episodes
as bench/learning.py). A probe of the observation and the network apart from RL's exploration and
reward, and a warm start for PPO (`train.py --init-module`).

    python bench/imitation.py --samples 12000 --epochs 4                  # the BEV of experiments/ppo
    python bench/imitation.py --samples 12000 --epochs 4 --ego-history    # + the ego's own trail
    python bench/imitation.py --samples 12000 --dagger-rounds 2 --dagger-samples 6000
    python bench/imitation.py --init-module runs/imitation/no_ego_history_dagger/checkpoint \
        --samples 8000 --dagger-rounds 1 --dagger-samples 8000 --lr 1e-4 --out runs/imitation-more

Demonstrations come from the training towns with traffic; the executed action carries Gaussian
noise (labels stay the autopilot's) so the data shows how to recover from small errors (DART).
DAgger (Ross et al. 2011) then drives with the cloned policy itself (the autopilot's action instead
with probability beta**round), labels the states it reaches with the autopilot's action, adds them
to the data and fits again: the policy learns to recover from its own mistakes, not only from noise.
Prints one JSON line; the module is saved under --out as an RLlib checkpoint tree (`infer.py` and
`ModulePolicy` read it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the experiments the configs name ('module:Class') and bench/ import from here

from bench.learning import HELD_OUT_TOWN, TRAIN_TOWNS, evaluate, experiment_config  # noqa: E402
from carla_env.rllib.checkpoint import check_init_module, module_dir  # noqa: E402


class DemonstrationPolicy:
    """The autopilot labels every state; the learner (if any) drives, the autopilot's action executed
    instead with probability `beta` (DAgger's mixture), plus Gaussian noise on what is executed (DART).
    Keeps the (observation, label) pairs, but only a fraction `keep_stopped` of those at standstill."""

    def __init__(self, job: dict, learner=None) -> None:
        from carla_env.agents import RouteAutopilot

        self.job, self.learner = job, learner
        self.autopilot, self.rng = RouteAutopilot(), np.random.default_rng(job["seed"])
        self.observations: list = []
        self.labels: list = []

    def reset(self, env, seed: int) -> None:
        self.autopilot.reset()

    def __call__(self, obs, env):
        job, rng = self.job, self.rng
        label = self.autopilot.action(env.core.hero, env.experiment.route, env.config.simulator.timestep)
        if env.core.hero.get_velocity().length() > 0.5 or rng.random() < job["keep_stopped"]:
            self.observations.append(obs)
            self.labels.append(label)
        executed = label if self.learner is None or rng.random() < job["beta"] else self.learner(obs)
        return np.clip(executed + rng.normal(0.0, job["noise"], 2), -1.0, 1.0).astype(np.float32)


def demonstrations(job: dict) -> tuple:
    """(packed observations, autopilot actions, route completions of finished episodes) from
    episodes on `job["town"]`. Without a `learner` checkpoint the autopilot drives; with one the
    learner drives and the autopilot's action is executed with probability `beta` (DAgger's
    mixture). Only a fraction `keep_stopped` of the frames at standstill is kept: long red-light
    waits would teach a cloned policy that a stopped car stays stopped (behaviour cloning's
    inertia problem)."""
    import torch

    torch.set_num_threads(1)
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import run_episode
    from carla_env.rllib.policy import ModulePolicy

    env = CarlaEnv(experiment_config("ppo", job["town"], birdview=job["birdview"]))
    learner = ModulePolicy.from_checkpoint(Path(job["learner"])) if job.get("learner") else None
    policy, completions, episode = DemonstrationPolicy(job, learner), [], 0

    def enough(*_) -> bool:
        return len(policy.observations) >= job["samples"]

    while not enough():
        row = run_episode(env, policy, job["seed"] * 10_000 + episode, on_step=enough)
        episode += 1
        if not row.get("stopped"):
            completions.append(row["route_completion"])
    env.close()
    return np.stack(policy.observations), np.stack(policy.labels), completions


def collect(samples: int, workers: int, base: dict, round_: int, seed: int = 0) -> tuple:
    """`samples` steps over the training towns, split across `workers` processes (towns round-robin)."""
    jobs = [
        {
            **base,
            "town": TRAIN_TOWNS[k % len(TRAIN_TOWNS)],
            "samples": samples // workers + (k < samples % workers),
            "seed": seed * 100_000 + round_ * 1_000 + k,
        }
        for k in range(min(workers, samples))  # no empty job
    ]
    with ProcessPoolExecutor(len(jobs)) as pool:
        parts = list(pool.map(demonstrations, jobs))
    completions = [c for _, _, cs in parts for c in cs]
    return (
        np.concatenate([o for o, _, _ in parts]),
        np.concatenate([a for _, a, _ in parts]),
        sum(completions) / len(completions) if completions else None,
    )


def build_module(birdview: dict):
    from carla_env.env import CarlaEnv
    from carla_env.rllib.algorithm import build_algo_config

    config = experiment_config("ppo", TRAIN_TOWNS[0], birdview=birdview)
    return build_algo_config(config).get_rl_module_spec(env=CarlaEnv(config)).build()


def fit(module, obs: np.ndarray, actions: np.ndarray, epochs: int, batch: int, lr: float) -> list[float]:
    """Maximise the policy's log-likelihood of the autopilot's actions (on the GPU when there is one);
    mean loss per epoch."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    dist_cls = module.get_train_action_dist_cls()
    rng = np.random.default_rng(0)
    losses = []
    module.train()
    for _ in range(epochs):
        order, total = rng.permutation(len(obs)), 0.0
        for k in range(0, len(order) - batch + 1, batch):
            pick = order[k : k + batch]
            out = module.forward_train({"obs": torch.from_numpy(obs[pick]).to(device)})
            dist = dist_cls.from_logits(out["action_dist_inputs"])
            loss = -dist.logp(torch.from_numpy(actions[pick]).to(device)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(pick)
        losses.append(total / (len(order) // batch * batch))
    module.cpu().eval()  # saved and evaluated on CPU
    return losses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=12_000, help="demonstration steps over the training towns")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--noise", type=float, default=0.1, help="std of the noise on executed actions")
    p.add_argument("--keep-stopped", type=float, default=0.1, help="fraction of standstill frames kept")
    p.add_argument("--ego-history", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--dagger-rounds", type=int, default=0, help="DAgger rounds after behaviour cloning")
    p.add_argument("--dagger-samples", type=int, default=12_000, help="steps the learner drives per round")
    p.add_argument(
        "--beta", type=float, default=0.5, help="round r executes the autopilot's action with p=beta**r"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the episodes")
    p.add_argument(
        "--init-module",
        type=Path,
        help="continue from this checkpoint's module (e.g. an earlier run's, split across time-limited calls)",
    )
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=50,
        help="held-out episodes; 0 skips the evaluation (a run continued later)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "imitation")
    args = p.parse_args()
    if args.samples < args.batch * len(TRAIN_TOWNS):
        p.error(f"--samples: at least {args.batch * len(TRAIN_TOWNS)} (one batch per training town)")
    if args.dagger_rounds < 0 or (args.dagger_rounds and args.dagger_samples < 1):
        p.error("--dagger-rounds must be >= 0 and --dagger-samples >= 1")
    if args.eval_episodes < 0:
        p.error("--eval-episodes must be >= 0")
    if not 0.0 <= args.beta <= 1.0:
        p.error("--beta: a probability in [0, 1]")
    birdview = {"ego_history": args.ego_history}
    module = None
    if args.init_module:
        from carla_env.config import ConfigError

        try:
            config = experiment_config("ppo", TRAIN_TOWNS[0], birdview=birdview)
            module = check_init_module(args.init_module, config)  # loaded once, checked, continued
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
    import torch

    torch.set_num_threads(args.workers)
    torch.manual_seed(args.seed)  # the module's initial weights (episodes: per worker, from --seed)
    workers = max(1, args.workers)
    base = {"noise": args.noise, "birdview": birdview, "keep_stopped": args.keep_stopped}
    t0 = time.monotonic()
    obs, actions, _ = collect(args.samples, workers, base, 0, args.seed)
    collect_s, fit_s = time.monotonic() - t0, 0.0
    if module is None:
        module = build_module(birdview)
    tag = ("ego_history" if args.ego_history else "no_ego_history") + (
        "_dagger" if args.dagger_rounds else ""
    )
    checkpoint = (args.out / tag / "checkpoint").resolve()
    rounds = []
    for round_ in range(args.dagger_rounds + 1):
        t1 = time.monotonic()
        losses = fit(module, obs, actions, args.epochs, args.batch, args.lr)
        fit_s += time.monotonic() - t1
        rounds.append({"samples": len(obs), "loss_per_epoch": [round(x, 3) for x in losses]})
        if round_ == args.dagger_rounds:
            break
        with tempfile.TemporaryDirectory() as learner:  # the workers load the policy from here
            module.save_to_path(str(module_dir(Path(learner))))
            t1 = time.monotonic()
            more_obs, more_actions, completion = collect(
                args.dagger_samples,
                workers,
                {**base, "learner": learner, "beta": args.beta ** (round_ + 1)},
                round_ + 1,
                args.seed,
            )
            collect_s += time.monotonic() - t1
        rounds[-1]["rollout_route_completion"] = None if completion is None else round(completion, 3)
        print(json.dumps({"dagger_round": round_ + 1, **rounds[-1]}), flush=True)
        obs, actions = np.concatenate([obs, more_obs]), np.concatenate([actions, more_actions])
    module.save_to_path(str(module_dir(checkpoint)))  # where ModulePolicy and --init-module look
    scores = (
        evaluate({tag: str(checkpoint)}, args.eval_episodes, workers, birdview) if args.eval_episodes else {}
    )
    print(
        json.dumps(
            {
                "ego_history": args.ego_history,
                "init_module": str(args.init_module) if args.init_module else None,
                "keep_stopped": args.keep_stopped,
                "samples": len(obs),
                "dagger_rounds": args.dagger_rounds,
                "dagger_samples": args.dagger_samples if args.dagger_rounds else 0,
                "beta": args.beta,
                "collect_s": round(collect_s, 1),
                "fit_s": round(fit_s, 1),
                "loss_per_epoch": rounds[-1]["loss_per_epoch"],
                "rounds": rounds,
                "held_out_town": HELD_OUT_TOWN,
                **scores.get(tag, {"episodes": 0}),
                "checkpoint": str(checkpoint),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
