"""A trained RLModule as a plain policy: observation in, greedy action out, torch only (no Ray runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

MODULE_PATH = Path("learner_group/learner/rl_module/default_policy")


class ModulePolicy:
    """Greedy actions of an RLModule: DQN's argmax, PPO's distribution mode (the Gaussian's mean)."""

    def __init__(self, module) -> None:
        self.module = module
        self.module.eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> ModulePolicy:
        from ray.rllib.core.rl_module.rl_module import RLModule

        # RLlib's own from_checkpoint trips its RLModuleConfig deprecation warning: not the user's to see.
        deprecations = logging.getLogger("ray._common.deprecation")
        level = deprecations.level
        deprecations.setLevel(logging.ERROR)
        try:  # absolute: RLlib reads a relative path as a URI and fails
            return cls(RLModule.from_checkpoint(str(Path(checkpoint).resolve() / MODULE_PATH)))
        finally:
            deprecations.setLevel(level)

    @property
    def observation_space(self):
        return self.module.observation_space

    def __call__(self, obs):
        import torch

        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.from_numpy(np.asarray(obs)[None])})
            if "actions" in out:
                action = out["actions"]
            else:
                dist = self.module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"])
                action = dist.to_deterministic().sample()
        action = action[0].cpu().numpy()
        return int(action) if action.ndim == 0 else action.astype(np.float32)
