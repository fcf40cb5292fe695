"""RLModules that read bit-packed BEV observations: unpack (and cast) on the module's device,
so env runners and replay buffers carry the packed uint8 bytes (1/8 of the raw masks).

RLlib 2.60's default CNN encoder neither unpacks bits nor casts uint8 to float.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.algorithms.dqn.dqn_catalog import DQNCatalog
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns

from carla_env.rllib.unpack import UnpackBits


def unpacked_space(packed: gym.spaces.Box, channels: int) -> gym.spaces.Box:
    """The (H, W, C) float space RLlib's CNN encoder is built for (it takes channels last)."""
    _, h, w = packed.shape
    return gym.spaces.Box(0.0, 1.0, (h, w, channels), np.float32)


def _packed_catalog(base: type) -> type:
    """A catalog that builds its encoder for the unpacked observation space."""

    class PackedCatalog(base):
        def __init__(self, observation_space, action_space, model_config_dict, **kwargs):
            channels = int(model_config_dict["bev_channels"])
            super().__init__(
                unpacked_space(observation_space, channels), action_space, model_config_dict, **kwargs
            )

    PackedCatalog.__name__ = PackedCatalog.__qualname__ = f"PackedBev{base.__name__}"
    return PackedCatalog


PackedBevDQNCatalog = _packed_catalog(DQNCatalog)
PackedBevPPOCatalog = _packed_catalog(PPOCatalog)


def _unpacked(module, batch: dict) -> dict:
    return {**batch, Columns.OBS: module.unpack(batch[Columns.OBS]).permute(0, 2, 3, 1)}  # channels last


class PackedBevDQNModule(DefaultDQNTorchRLModule):
    """DQN's default module behind an UnpackBits layer; every forward path goes through the Q helper."""

    def setup(self):
        super().setup()
        self.unpack = UnpackBits(int(self.model_config["bev_channels"]))

    def _qf_forward_helper(self, batch, encoder, head):
        return super()._qf_forward_helper(_unpacked(self, batch), encoder, head)


class PackedBevPPOModule(DefaultPPOTorchRLModule):
    """PPO's default module behind an UnpackBits layer, on its three encoder paths."""

    def setup(self):
        super().setup()
        self.unpack = UnpackBits(int(self.model_config["bev_channels"]))

    def _forward(self, batch, **kwargs):
        return super()._forward(_unpacked(self, batch), **kwargs)

    def _forward_train(self, batch, **kwargs):
        return super()._forward_train(_unpacked(self, batch), **kwargs)

    def compute_values(self, batch, embeddings=None):
        return super().compute_values(batch if embeddings is not None else _unpacked(self, batch), embeddings)
