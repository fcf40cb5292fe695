"""Can a policy drive from this observation? Behaviour cloning of the reference autopilot into the
PPO experiment's RLModule, evaluated greedily on the held-out town (the same 50 episodes as
bench/learning.py). A cheap probe of the observation and the network, apart from RL's exploration
and reward, and a warm start for PPO.

    python bench/imitation.py --samples 12000 --epochs 4                  # the BEV of experiments/ppo
    python bench/imitation.py --samples 12000 --epochs 4 --ego-history    # + the ego's own trail

Demonstrations come from the training towns with traffic; the executed action carries Gaussian
noise (labels stay the autopilot's) so the data shows how to recover from small errors (DART).
Prints one JSON line; the module is saved under --out as an RLlib checkpoint tree (`infer.py` and
`ModulePolicy` read it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.learning import HELD_OUT_TOWN, TRAIN_TOWNS, evaluate, experiment_config  # noqa: E402
from train import module_dir  # noqa: E402


def demonstrations(
    town: str, samples: int, seed: int, noise: float, birdview: dict, keep_stopped: float
) -> tuple:
    """(packed observations, autopilot actions) from autopilot episodes on `town`; only a fraction
    `keep_stopped` of the frames at standstill is kept (long red-light waits would teach a cloned
    policy that a stopped car stays stopped: the inertia problem of behaviour cloning)."""
    import torch

    torch.set_num_threads(1)
    from carla_env.env import CarlaEnv
    from experiments.autopilot.agent import RouteAutopilot

    env = CarlaEnv(experiment_config("ppo", town, birdview=birdview))
    autopilot, rng = RouteAutopilot(), np.random.default_rng(seed)
    obs_out, act_out, episode = [], [], 0
    while len(obs_out) < samples:
        obs, _ = env.reset(seed=seed * 10_000 + episode)
        autopilot.reset()
        episode += 1
        done = False
        while not done and len(obs_out) < samples:
            label = autopilot.action(env.core.hero, env.experiment.route, env.config.simulator.timestep)
            if env.core.hero.get_velocity().length() > 0.5 or rng.random() < keep_stopped:
                obs_out.append(obs)
                act_out.append(label)
            executed = np.clip(label + rng.normal(0.0, noise, 2), -1.0, 1.0).astype(np.float32)
            obs, _, terminated, truncated, _ = env.step(executed)
            done = terminated or truncated
    env.close()
    return np.stack(obs_out), np.stack(act_out)


def build_module(birdview: dict):
    from carla_env.env import CarlaEnv
    from train import build_algo_config

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
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "imitation")
    args = p.parse_args()
    if args.samples < args.batch * len(TRAIN_TOWNS):
        p.error(f"--samples: at least {args.batch * len(TRAIN_TOWNS)} (one batch per training town)")
    import torch

    torch.set_num_threads(args.workers)
    birdview = {"ego_history": args.ego_history}
    t0 = time.monotonic()
    per_town = args.samples // len(TRAIN_TOWNS)
    with ProcessPoolExecutor(min(args.workers, len(TRAIN_TOWNS))) as pool:
        parts = list(
            pool.map(
                demonstrations,
                TRAIN_TOWNS,
                [per_town] * len(TRAIN_TOWNS),
                range(len(TRAIN_TOWNS)),
                [args.noise] * len(TRAIN_TOWNS),
                [birdview] * len(TRAIN_TOWNS),
                [args.keep_stopped] * len(TRAIN_TOWNS),
            )
        )
    obs = np.concatenate([o for o, _ in parts])
    actions = np.concatenate([a for _, a in parts])
    collect_s = time.monotonic() - t0
    module = build_module(birdview)
    t1 = time.monotonic()
    losses = fit(module, obs, actions, args.epochs, args.batch, args.lr)
    fit_s = time.monotonic() - t1
    tag = "ego_history" if args.ego_history else "no_ego_history"
    checkpoint = (args.out / tag / "checkpoint").resolve()
    module.save_to_path(str(module_dir(checkpoint)))  # where ModulePolicy and --init-module look
    scores = evaluate({f"bc_{tag}": str(checkpoint)}, args.eval_episodes, args.workers, birdview)
    print(
        json.dumps(
            {
                "ego_history": args.ego_history,
                "keep_stopped": args.keep_stopped,
                "samples": len(obs),
                "collect_s": round(collect_s, 1),
                "fit_s": round(fit_s, 1),
                "loss_per_epoch": [round(x, 3) for x in losses],
                "held_out_town": HELD_OUT_TOWN,
                **scores[f"bc_{tag}"],
                "checkpoint": str(checkpoint),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
