"""What a person sees and what a trainer is told: the ego in colour pictures, the demo's contacts,
where the preview writes, and observations inside their space (issue 14, "What is drawn")."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest

from carla_env.config import load_config
from carla_env.env import CarlaEnv
from carla_env.sensors import BirdviewRenderer, BirdviewSpec, Scene
from carla_env.sensors.birdview import EGO_COLOUR

ROOT = Path(__file__).resolve().parents[1]
EGO = EGO_COLOUR
CONFIGS = ["experiments/dqn/config.yaml", "experiments/ppo/config.yaml"]


def run_module(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, whatever the cwd
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def ego_pixels(frame_rgb: np.ndarray) -> np.ndarray:
    return (frame_rgb == EGO).all(axis=-1)


def test_colour_picture_draws_the_ego_the_policy_channels_leave_out():
    spec = BirdviewSpec()
    assert "ego" not in spec.channels  # the policy's observation leaves the ego implicit, as Roach's
    from carla_env.maps import load_town

    renderer = BirdviewRenderer(load_town("GridTown03").lanes, spec)
    half_length, half_width = 2.4, 1.1
    obs = renderer(Scene(ego=np.array([50.0, 20.0, 0.7, half_length, half_width]), vehicles=np.zeros((0, 5))))
    assert obs.shape[0] == spec.num_channels  # no channel added for the picture
    ego = ego_pixels(renderer.colorize(obs))
    rows, cols = np.nonzero(ego)
    assert (rows.mean(), cols.mean()) == pytest.approx((spec.size - spec.ego_offset, spec.size / 2), abs=1.0)
    # Heading up: long side vertical, the box's size in pixels.
    ppm = spec.pixels_per_meter
    assert np.ptp(rows) + 1 == pytest.approx(2 * half_length * ppm, abs=2)
    assert np.ptp(cols) + 1 == pytest.approx(2 * half_width * ppm, abs=2)


def test_inference_video_frames_show_the_ego():
    """CarlaEnv.render is what infer.py writes to the video."""
    env = CarlaEnv(load_config(CONFIGS[0], {"simulator": {"backend": "embedded"}}), render_mode="rgb_array")
    try:
        env.reset(seed=1)
        for _ in range(5):
            env.step(6)
        frame = env.render()
    finally:
        env.close()
    spec = env.config.experiment.sensors["birdview"]
    assert frame.shape == (spec.size, spec.size, 3)
    assert ego_pixels(frame)[spec.size - spec.ego_offset, spec.size // 2]
    assert ego_pixels(frame).sum() > 4 * spec.pixels_per_meter**2  # a car's box (> 4 m^2), not a dot


def test_preview_writes_under_runs_by_default_and_says_where(tmp_path):
    proc = run_module("-m", "carla_env.preview", "--town", "GridTown03", "--seconds", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frame, whole = tmp_path / "runs/preview/bev.png", tmp_path / "runs/preview/bev_map.png"
    assert str(frame) in proc.stdout and str(whole) in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing beside it
    picture = cv2.imread(str(frame))[:, :, ::-1]  # 2x the BEV
    spec = BirdviewSpec()
    assert ego_pixels(picture)[2 * (spec.size - spec.ego_offset), spec.size]


def test_demo_hero_is_in_contact_with_nothing():
    """The demo's hero used to rear-end NPCs and cross junctions through them (108 of 1,200 ticks with
    its box overlapping another car's on GridTown01): it now slows for the vehicle ahead and stops at
    red and yellow lights."""
    proc = run_module("-m", "carla_env.demo", "--town", "GridTown01", "--seconds", "60")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "1200 ticks" in line and " 0 ticks in contact" in line, line
    driven = float(line.split("hero drove ")[1].split(" m")[0])
    assert driven > 50.0, line  # it drives, not just waits


@pytest.mark.parametrize("config", CONFIGS)
def test_first_and_later_observations_are_in_the_space(config):
    """Through gymnasium's passive checker, the wrapper RLlib's gym.make_vec puts around each env."""
    env = gym.wrappers.PassiveEnvChecker(
        CarlaEnv(load_config(config, {"simulator": {"backend": "embedded"}}))
    )
    space = env.observation_space
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for seed in (0, 1):
                obs, _ = env.reset(seed=seed)
                assert space.contains(obs), f"reset(seed={seed})"
                for _ in range(10):
                    obs, *_ = env.step(env.action_space.sample())
                    assert space.contains(obs)
    finally:
        env.close()
    assert not [w for w in caught if "observation space" in str(w.message)]
