"""Drive a trained checkpoint: greedy episodes, a metrics table, a JSON summary, a BEV video.

    python infer.py CHECKPOINT [--config CONFIG] [--episodes N] [--video out.mp4] [--json out.json]

CHECKPOINT is a checkpoint folder of train.py (runs/<name>/<trial>/checkpoint_NNNNNN) or a run folder
(its newest checkpoint is used). Only the torch RLModule is loaded: no Ray runtime is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from carla_env.rllib.policy import MODULE_PATH, ModulePolicy

CONFIG_NAME = "carla_env_config.yaml"


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest one under a run folder."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}; give a checkpoint_* folder or a run folder of train.py"
        )
    if (path / MODULE_PATH).is_dir():
        return path
    found = sorted(path.glob("**/checkpoint_*"), key=lambda p: (p.stat().st_mtime, p.name))
    found = [p for p in found if (p / MODULE_PATH).is_dir()]
    if not found:
        raise CheckpointError(
            f"no RLlib checkpoint with an RLModule under {path}; was it written by train.py?"
        )
    return found[-1]


def find_config(checkpoint: Path) -> Path:
    for parent in [checkpoint, *checkpoint.parents]:
        if (parent / CONFIG_NAME).is_file():
            return parent / CONFIG_NAME
    raise CheckpointError(
        f"no {CONFIG_NAME} above {checkpoint}; pass --config with the experiment's config.yaml"
    )


def load_policy(checkpoint: Path) -> ModulePolicy:
    try:
        return ModulePolicy.from_checkpoint(checkpoint)
    except Exception as e:  # a foreign or truncated checkpoint: say so in one line
        raise CheckpointError(
            f"cannot load the RLModule from {checkpoint}: {type(e).__name__}: {e}"
        ) from None


def _describe_space(space) -> str:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return f"{space.n} discrete actions (e.g. DQN)"
    if isinstance(space, gym.spaces.Box):
        return f"a continuous {space.shape} {space.dtype} box (e.g. PPO)"
    return str(space)


def check_spaces(checkpoint: Path, policy: ModulePolicy, env) -> None:
    """The module takes this config's observations and gives its actions (a DQN config with a PPO
    checkpoint of the same BEV has the same observations but not the same actions)."""
    import gymnasium as gym

    mine, theirs = env.observation_space, policy.observation_space
    if mine.shape != theirs.shape:
        raise CheckpointError(
            f"checkpoint {checkpoint} expects observations {theirs.shape}, the config gives {mine.shape}; "
            "pass the --config it was trained with"
        )
    mine, theirs = env.action_space, policy.module.action_space
    same = type(mine) is type(theirs) and (
        mine.n == theirs.n if isinstance(mine, gym.spaces.Discrete) else mine.shape == theirs.shape
    )
    if not same:
        raise CheckpointError(
            f"checkpoint {checkpoint} gives {_describe_space(theirs)}, the config's experiment takes "
            f"{_describe_space(mine)}; pass the --config it was trained with"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--config", type=Path, help="experiment config (default: the one saved with the run)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--video", type=Path, help="write the BEV of every episode to this .mp4")
    p.add_argument("--json", type=Path, help="write the summary (per episode and mean) to this file")
    p.add_argument("--seed", type=int, default=1000, help="first episode's seed (training used others)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print("--episodes must be >= 1", file=sys.stderr)
        return 2
    if args.video is not None and args.video.suffix.lower() != ".mp4":
        print(f"--video {args.video}: give an .mp4 path", file=sys.stderr)
        return 2

    from carla_env.config import ConfigError, load_config

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        config = load_config(args.config or find_config(checkpoint))
        policy = load_policy(checkpoint)
    except (CheckpointError, ConfigError) as e:
        print(e, file=sys.stderr)
        return 2

    import cv2
    from tqdm import tqdm

    from carla_env.env import CarlaEnv
    from carla_env.metrics import DrivingMetrics

    env = CarlaEnv(config)
    try:
        check_spaces(checkpoint, policy, env)
    except CheckpointError as e:
        print(e, file=sys.stderr)
        return 2
    writer = None
    episodes = []
    for k in tqdm(range(args.episodes), desc="episodes", unit="ep"):
        obs, _ = env.reset(seed=args.seed + k)
        done, ret, info, steps = False, 0.0, {}, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            ret += reward
            steps += 1
            done = terminated or truncated
            if args.video is not None:
                frame = env.render()
                if frame is not None:
                    if writer is None:
                        args.video.parent.mkdir(parents=True, exist_ok=True)
                        h, w = frame.shape[:2]
                        writer = cv2.VideoWriter(
                            str(args.video),
                            cv2.VideoWriter_fourcc(*"mp4v"),
                            1.0 / config.simulator.timestep,
                            (w, h),
                        )
                    writer.write(frame[:, :, ::-1])
        episodes.append(
            {
                "return": ret,
                "steps": steps,
                **{k2: float(v) for k2, v in info.items() if isinstance(v, (int, float))},
            }
        )
    env.close()
    if writer is not None:
        writer.release()
    keys = ["return", *DrivingMetrics().summary()]
    mean = {key: float(np.mean([e.get(key, np.nan) for e in episodes])) for key in keys}
    print(f"\ncheckpoint: {checkpoint}\n" + "".join(f"{key:>24}  {mean[key]:10.3f}\n" for key in keys))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"checkpoint": str(checkpoint), "mean": mean, "episodes": episodes}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
