"""Lean env-to-module and module-to-env pipelines for a CarlaEnvRunner: RLlib's default connectors fused.

RLlib 2.60's default pipelines of a single-agent runner with a stateless module take ~280 µs an env
step on the 2-core machine (8 envs, docs/results): each of the 13 connector pieces is timed into the
MetricsLogger on every call, and the data goes through per-episode dicts and lists and back. For that
case (single agent, stateless module, Box or Discrete actions, no user connectors) the two classes
below do the same work in one pass each and return the same data:

- env to module (AddObservationsFromEpisodesToBatch, AddTimeDimToBatchAndZeroPad,
  AddStatesFromEpisodesToBatch, BatchIndividualItems, NumpyToTensor): the envs' latest observations,
  which the runner hands in (the observation each episode just got), stacked and made a tensor on the
  module's device.
- module to env (GetActions, TensorToNumpy, UnBatchToIndividualItems, RemoveSingleTsTimeRankFromBatch,
  NormalizeAndClipActions, ListifyDataForVectorEnv): actions sampled from the module's action
  distribution where it gave none (with their log-probability), everything to numpy, the actions
  batched and unsquashed or clipped for the env in one array operation, every other column a list of
  per-env items (what the episodes store as extra model outputs).

Both keep RLlib's connector pieces (state, spaces, merge_states) and fall back to them, piece by piece,
wherever the case differs. Skipped: the per-piece and per-pipeline timers RLlib logs under
`env_to_module_connector` and `module_to_env_connector` (reporting only; nothing reads them).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
from ray.rllib.core.columns import Columns
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.spaces.space_utils import clip_action, unbatch, unsquash_action
from ray.rllib.utils.torch_utils import convert_to_torch_tensor

# RLlib's default pieces, in order, for a single-agent runner (AlgorithmConfig.build_*_connector).
DEFAULT_ENV_TO_MODULE = (
    "AddObservationsFromEpisodesToBatch",
    "AddTimeDimToBatchAndZeroPad",
    "AddStatesFromEpisodesToBatch",
    "BatchIndividualItems",
    "NumpyToTensor",
)
DEFAULT_MODULE_TO_ENV = (
    "GetActions",
    "TensorToNumpy",
    "UnBatchToIndividualItems",
    "RemoveSingleTsTimeRankFromBatch",
    "NormalizeAndClipActions",
    "ListifyDataForVectorEnv",
)


def piece_names(pipeline) -> tuple[str, ...]:
    return tuple(type(c).__name__ for c in pipeline.connectors)


def can_be_lean(
    env_to_module, module_to_env, module, observation_space: gym.Space, action_space: gym.Space
) -> bool:
    """Whether both pipelines are RLlib's defaults for a single-agent, stateless module with a Box
    observation space and a Box or Discrete action space: the case the lean pipelines fuse. Both or neither (RLlib's module-to-env
    unbatching reads what its env-to-module batching memorised)."""
    return (
        piece_names(env_to_module) == DEFAULT_ENV_TO_MODULE
        and piece_names(module_to_env) == DEFAULT_MODULE_TO_ENV
        and module is not None
        and not module.is_stateful()
        and isinstance(observation_space, gym.spaces.Box)
        and isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete)
    )


class LeanEnvToModule(EnvToModulePipeline):
    """RLlib's default env-to-module pipeline, fused: {obs: the observations stacked, a tensor}."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, device=None, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.device = device

    @classmethod
    def of(cls, pipeline: EnvToModulePipeline, device) -> LeanEnvToModule:
        """The lean twin of RLlib's default pipeline (its pieces kept: state, spaces, fallback)."""
        return cls(
            pipeline.input_observation_space,
            pipeline.input_action_space,
            connectors=list(pipeline.connectors),
            device=device,
        )

    def get_ctor_args_and_kwargs(self):  # a checkpoint rebuilds it whole
        args, kwargs = super().get_ctor_args_and_kwargs()
        return args, {**kwargs, "device": self.device}

    def __call__(
        self, *, rl_module, batch=None, episodes, explore=None, shared_data=None, metrics=None, **kwargs
    ):
        observations = kwargs.get(Columns.OBS)
        if observations is None or batch or len(observations) != len(episodes):
            return super().__call__(
                rl_module=rl_module,
                batch=batch if batch is not None else {},
                episodes=episodes,
                explore=explore,
                shared_data=shared_data,
                metrics=metrics,
                **kwargs,
            )
        # The runner passes each env's newest observation, the one its episode just got (reset or step),
        # which is what AddObservationsFromEpisodesToBatch reads back from the episodes.
        return {Columns.OBS: convert_to_torch_tensor(np.stack(observations), device=self.device)}


class LeanModuleToEnv(ModuleToEnvPipeline):
    """RLlib's default module-to-env pipeline, fused. Returns the actions (and the env's actions) as
    batched arrays and every other column as a list of per-env items, as ListifyDataForVectorEnv does."""

    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        env_action_space: gym.Space | None = None,
        normalize: bool = True,
        clip: bool = False,
        **kwargs,
    ):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.env_action_space, self.normalize, self.clip = env_action_space, normalize, clip

    @classmethod
    def of(cls, pipeline: ModuleToEnvPipeline, action_space: gym.Space, normalize: bool, clip: bool):
        """The lean twin of RLlib's default pipeline; `normalize`, `clip`: the config's normalize_actions
        and clip_actions, as RLlib's NormalizeAndClipActions takes them."""
        return cls(
            pipeline.input_observation_space,
            pipeline.input_action_space,
            connectors=list(pipeline.connectors),
            env_action_space=action_space,
            normalize=normalize,
            clip=clip,
        )

    def get_ctor_args_and_kwargs(self):  # a checkpoint rebuilds it whole
        args, kwargs = super().get_ctor_args_and_kwargs()
        extra = {"env_action_space": self.env_action_space, "normalize": self.normalize, "clip": self.clip}
        return args, {**kwargs, **extra}

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, metrics=None, **kwargs):
        batch = dict(batch)
        # GetActions: sample from the module's distribution where it gave no actions.
        if Columns.ACTIONS not in batch and Columns.ACTION_DIST_INPUTS in batch:
            dist_cls = (
                rl_module.get_exploration_action_dist_cls()
                if explore
                else rl_module.get_inference_action_dist_cls()
            )
            dist = dist_cls.from_logits(batch[Columns.ACTION_DIST_INPUTS])
            if not explore:
                dist = dist.to_deterministic()
            actions = dist.sample()
            batch[Columns.ACTIONS] = actions
            if Columns.ACTION_LOGP not in batch:
                batch[Columns.ACTION_LOGP] = dist.logp(actions)
        batch = convert_to_numpy(batch)  # TensorToNumpy
        actions = batch.pop(Columns.ACTIONS)
        for_env = batch.pop(Columns.ACTIONS_FOR_ENV, None)  # from the module itself (rare): kept batched
        # UnBatchToIndividualItems + ListifyDataForVectorEnv: one item per env, in env order.
        out = {
            column: list(value) if isinstance(value, np.ndarray) else unbatch(value)
            for column, value in batch.items()
        }
        out[Columns.ACTIONS] = actions
        if for_env is not None:
            out[Columns.ACTIONS_FOR_ENV] = np.asarray(for_env)
        # NormalizeAndClipActions, on the whole batch at once (elementwise: the same values).
        if self.normalize:
            out[Columns.ACTIONS_FOR_ENV] = unsquash_action(actions, self.env_action_space)
        elif self.clip:
            out[Columns.ACTIONS_FOR_ENV] = clip_action(actions, self.env_action_space)
        return out
