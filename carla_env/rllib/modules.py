"""RLModules that read bit-packed BEV observations: unpack (and cast) on the module's device,
so env runners and replay buffers carry the packed uint8 bytes (1/8 of the raw masks).

RLlib 2.60's default CNN encoder neither unpacks bits nor casts uint8 to float.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.algorithms.dqn.dqn_catalog import DQNCatalog
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns

from carla_env.rllib.unpack import UnpackBits


def unpacked_space(packed: gym.spaces.Box, channels: int) -> gym.spaces.Box:
    """The (H, W, C) float space RLlib's CNN encoder is built for (it takes channels last)."""
    _, h, w = packed.shape
    return gym.spaces.Box(0.0, 1.0, (h, w, channels), np.float32)


class PackedBevDQNCatalog(DQNCatalog):
    def __init__(self, observation_space, action_space, model_config_dict, **kwargs):
        channels = int(model_config_dict["bev_channels"])
        super().__init__(
            unpacked_space(observation_space, channels), action_space, model_config_dict, **kwargs
        )


class PackedBevDQNModule(DefaultDQNTorchRLModule):
    """DQN's default module behind an UnpackBits layer; every forward path goes through the Q helper."""

    def setup(self):
        super().setup()
        self.unpack = UnpackBits(int(self.model_config["bev_channels"]))

    def _qf_forward_helper(self, batch, encoder, head):
        obs = self.unpack(batch[Columns.OBS]).permute(0, 2, 3, 1)  # (B, C, H, W) -> channels last
        return super()._qf_forward_helper({**batch, Columns.OBS: obs}, encoder, head)
