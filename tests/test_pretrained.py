"""The module shipped in experiments/ppo/pretrained: what `make infer EXP=ppo` drives on a fresh clone.
It must keep loading and fitting the experiment as the code around it changes."""

import subprocess
from pathlib import Path

from carla_env.config import load_config
from carla_env.env import CarlaEnv
from carla_env.evaluate import CheckpointPolicy, run_episode
from carla_env.rllib.checkpoint import find_config, resolve_checkpoint, space_mismatch

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "experiments/ppo/pretrained"


def test_the_shipped_ppo_module_fits_the_experiment_and_drives():
    checkpoint = resolve_checkpoint(PRETRAINED)
    config = load_config(find_config(checkpoint), {"simulator": {"backend": "embedded"}})
    env = CarlaEnv(config)
    policy = CheckpointPolicy(env, checkpoint)
    # The shipped experiment's spaces, not only those saved with the module: a config change that would
    # strand the module fails here.
    shipped = CarlaEnv(
        load_config(ROOT / "experiments/ppo/config.yaml", {"simulator": {"backend": "embedded"}})
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


def test_make_infer_falls_back_to_the_shipped_module():
    out = subprocess.run(
        ["make", "-n", "infer", "EXP=ppo"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    expected = "runs/ppo" if (ROOT / "runs/ppo").exists() else "experiments/ppo/pretrained"
    assert f"infer.py {expected} " in out
