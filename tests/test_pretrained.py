"""The modules shipped in experiments/{ppo,dqn}/pretrained: what `make infer EXP=...` drives on a fresh
clone. They must keep loading and fitting their experiments as the code around them changes."""

import subprocess
from pathlib import Path

import pytest

from carla_env.config import load_config
from carla_env.env import CarlaEnv
from carla_env.evaluate import CheckpointPolicy, run_episode
from carla_env.rllib.checkpoint import find_config, resolve_checkpoint, space_mismatch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["ppo", "dqn"]


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_the_shipped_module_fits_the_experiment_and_drives(exp):
    checkpoint = resolve_checkpoint(ROOT / f"experiments/{exp}/pretrained")
    config = load_config(find_config(checkpoint), {"simulator": {"backend": "embedded"}})
    env = CarlaEnv(config)
    policy = CheckpointPolicy(env, checkpoint)
    # The shipped experiment's spaces, not only those saved with the module: a config change that would
    # strand the module fails here.
    shipped = CarlaEnv(
        load_config(ROOT / f"experiments/{exp}/config.yaml", {"simulator": {"backend": "embedded"}})
    )
    assert space_mismatch(checkpoint, policy.module.module, shipped) is None
    seen = []
    row = run_episode(
        env,
        policy,
        seed=1000,
        on_step=lambda env, obs, info: seen.append(info["distance_m"]) or len(seen) >= 150,
    )
    env.close()
    assert row["steps"] > 0 and seen[-1] > 20.0  # it drives off, greedy, along its route


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_make_infer_falls_back_to_the_shipped_module(exp):
    out = subprocess.run(
        ["make", "-n", "infer", f"EXP={exp}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    expected = f"runs/{exp}" if (ROOT / f"runs/{exp}").exists() else f"experiments/{exp}/pretrained"
    assert f"infer.py {expected} " in out
