"""RLModules for bird's-eye-view observations, built from the env's observation space alone.

A BEV observation is (C, H, W) uint8: masks in {0, 1}, or bit-packed masks (high 255, 8 channels a
byte) that the module unpacks on its own device, so env runners and replay buffers carry 1/8 of the
bytes. Either way the module casts to float and moves channels last: RLlib 2.60's default CNN encoder
neither unpacks bits nor casts uint8, and it takes channels last.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.dqn_catalog import DQNCatalog
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns

from carla_env.rllib.unpack import UnpackBits


def is_bev_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def is_packed(space: gym.spaces.Box) -> bool:
    return int(space.high.max()) == 255  # masks are {0, 1}; packed bytes use all 8 bits


def encoder_space(space: gym.spaces.Box) -> gym.spaces.Box:
    """The (H, W, C) float space the CNN encoder is built for; a packed byte holds 8 channels
    (the padding bits past the last channel are always 0)."""
    depth, h, w = space.shape
    return gym.spaces.Box(0.0, 1.0, (h, w, depth * 8 if is_packed(space) else depth), np.float32)


class BevToFloat(torch.nn.Module):
    """(B, C or bytes, H, W) uint8 -> (B, H, W, channels) float32 masks, on the input's device."""

    def __init__(self, space: gym.spaces.Box) -> None:
        super().__init__()
        self.unpack = UnpackBits(space.shape[0] * 8) if is_packed(space) else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        masks = self.unpack(obs) if self.unpack is not None else obs.float()
        return masks.permute(0, 2, 3, 1)


def _bev_catalog(base: type) -> type:
    """A catalog that builds its encoder for the float, channels-last BEV."""

    class BevCatalog(base):
        def __init__(self, observation_space, action_space, model_config_dict, **kwargs):
            super().__init__(encoder_space(observation_space), action_space, model_config_dict, **kwargs)

    BevCatalog.__name__ = BevCatalog.__qualname__ = f"Bev{base.__name__}"
    return BevCatalog


BevDQNCatalog = _bev_catalog(DQNCatalog)
BevPPOCatalog = _bev_catalog(PPOCatalog)


def drop_noop_padding(module: torch.nn.Module) -> None:
    """Replace RLlib's zero-width ZeroPad2d layers (its "same" padding where none is needed: a 4x4
    stride-4 first conv) by Identity: each copied the whole float input, ~12% of a CPU forward pass.
    Pads hold no parameters, so checkpoints load either way."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ZeroPad2d) and not any(child.padding):
                setattr(parent, name, torch.nn.Identity())


def _as_float(module, batch: dict) -> dict:
    return {**batch, Columns.OBS: module.to_float(batch[Columns.OBS])}


class BevDQNModule(DefaultDQNTorchRLModule):
    """DQN's default module behind a BevToFloat layer; every forward path goes through the Q helper."""

    def setup(self):
        super().setup()
        self.to_float = BevToFloat(self.observation_space)
        drop_noop_padding(self)

    def _qf_forward_helper(self, batch, encoder, head):
        return super()._qf_forward_helper(_as_float(self, batch), encoder, head)


class BevPPOModule(DefaultPPOTorchRLModule):
    """PPO's default module behind a BevToFloat layer, on its three encoder paths."""

    def setup(self):
        super().setup()
        self.to_float = BevToFloat(self.observation_space)
        drop_noop_padding(self)

    def _forward(self, batch, **kwargs):
        return super()._forward(_as_float(self, batch), **kwargs)

    def _forward_train(self, batch, **kwargs):
        return super()._forward_train(_as_float(self, batch), **kwargs)

    def compute_values(self, batch, embeddings=None):
        return super().compute_values(batch if embeddings is not None else _as_float(self, batch), embeddings)
