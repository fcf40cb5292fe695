"""ListInfoSyncVectorEnv steps exactly as gymnasium's SyncVectorEnv + RLlib's DictInfoToList wrapper
(next-step autoreset included), with each env's info dict passed through as a list."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers.vector import DictInfoToList

from carla_env.rllib.vector_env import ListInfoSyncVectorEnv


class InfoCartPole(gym.Wrapper):
    """CartPole with a few info keys, as CarlaEnv's metrics are."""

    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        self.steps = 0

    def reset(self, **kwargs):
        self.steps = 0
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "backend": "test"}

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "steps": self.steps, "angle": float(obs[2])}


def test_steps_resets_and_infos_match_gymnasiums_sync_vector_env():
    ours = ListInfoSyncVectorEnv([InfoCartPole for _ in range(3)])
    reference = DictInfoToList(gym.vector.SyncVectorEnv([InfoCartPole for _ in range(3)]))
    (a, a_info), (b, b_info) = ours.reset(seed=7), reference.reset(seed=7)
    assert np.array_equal(a, b) and a_info == b_info
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(200):
        actions = rng.integers(0, 2, 3)
        got, want = ours.step(actions), reference.step(actions)
        for x, y in zip(got[:4], want[:4], strict=True):
            assert np.array_equal(x, y)
        assert got[4] == want[4]  # one dict per env: steps, angle; {} ... reset info on autoreset
        ends += int(np.sum(got[2] | got[3]))
    assert ends > 3  # episodes ended and the envs were reset on the next step
    with pytest.raises(ValueError, match="reset_mask"):
        ours.reset(options={"reset_mask": np.array([True, False, False])})
