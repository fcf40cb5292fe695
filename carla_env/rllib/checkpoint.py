"""A run's files: the config saved beside its checkpoints, finding a checkpoint, loading its policy.

One place for what train.py writes and infer.py, `carla_env.evaluate` and the benchmarks read.
"""

from __future__ import annotations

import os
from pathlib import Path

from carla_env.config import ConfigError
from carla_env.rllib.policy import MODULE_PATH, ModulePolicy

CONFIG_NAME = "carla_env_config.yaml"  # the validated config, beside the run's checkpoints


class CheckpointError(ValueError):
    """A checkpoint that is missing, foreign or does not fit; str(e) is the one-line message."""


def save_config(config, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)  # never a half-written config


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest one under a run folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}; give a checkpoint_* folder or a run folder of train.py "
            "(none yet: train one, e.g. make train EXP=ppo)"
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
    """The config saved with the run this checkpoint belongs to."""
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


def module_dir(checkpoint: Path) -> Path:
    return Path(checkpoint).resolve() / MODULE_PATH


def check_init_module(checkpoint: Path, config):
    """The module loads and fits this experiment's spaces: checked before the run exists. Returns it."""
    from carla_env.env import CarlaEnv

    if not module_dir(checkpoint).is_dir():
        raise ConfigError(
            f"--init-module: no policy module under {checkpoint}; give a checkpoint folder "
            "(a run's checkpoint_N, or bench/imitation.py's)"
        )
    try:
        module = ModulePolicy.from_checkpoint(checkpoint).module
    except Exception as e:  # a truncated or foreign checkpoint
        raise ConfigError(f"--init-module: cannot load {checkpoint}: {type(e).__name__}: {e}") from None
    mismatch = space_mismatch(checkpoint, module, CarlaEnv(config))  # spaces only: no world is built
    if mismatch:
        raise ConfigError(f"--init-module: {mismatch}; use a checkpoint of the same experiment")
    return module


def _describe_actions(space) -> str:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return f"{space.n} discrete actions (e.g. DQN)"
    if isinstance(space, gym.spaces.Box):
        return f"a continuous {space.shape} {space.dtype} box (e.g. PPO)"
    return str(space)


def space_mismatch(checkpoint: Path, module, env) -> str | None:
    """How a checkpoint's module does not fit an env's spaces (e.g. a DQN config with a PPO checkpoint
    of the same BEV), or None; callers add the fix that fits their command."""
    if env.observation_space != module.observation_space:
        return (
            f"checkpoint {checkpoint} takes observations {module.observation_space}, "
            f"the config gives {env.observation_space}"
        )
    if env.action_space != module.action_space:
        return (
            f"checkpoint {checkpoint} gives {_describe_actions(module.action_space)}, "
            f"the config's experiment takes {_describe_actions(env.action_space)}"
        )
    return None
