"""An EnvRunner whose envs each know their place: worker index and vector index.

RLlib 2.60's SingleAgentEnvRunner.make_env builds its `num_envs_per_env_runner` envs through
gymnasium.make_vec with one EnvContext for all of them (no vector index), so every env of a runner
would take the same slot: the same town of a town list, the same GPU for its CARLA server, the same
port range. CarlaEnvRunner builds the vector env itself, env i with `EnvContext(vector_index=i)`, in
one sync vector env (carla_env.rllib.vector_env). Its connector pipelines are RLlib's defaults fused
(carla_env.rllib.connectors: the same data, under half their time a step), where they are the defaults; the
rest of sampling (batched inference over the envs, episodes, callbacks, metrics) is RLlib's own.
"""

from __future__ import annotations

import functools
import logging

import gymnasium as gym
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.env.env_context import EnvContext
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.tune.registry import ENV_CREATOR, _global_registry

from carla_env.rllib.connectors import LeanEnvToModule, LeanModuleToEnv, can_be_lean
from carla_env.rllib.vector_env import ListInfoSyncVectorEnv

log = logging.getLogger(__name__)


def env_context(env_config: dict, worker_index: int, vector_index: int, num_workers: int, remote: bool):
    return EnvContext(
        dict(env_config),
        worker_index=worker_index,
        vector_index=vector_index,
        num_workers=num_workers,
        remote=remote,
    )


def _build(creator, context: EnvContext):
    return creator(context)


class CarlaEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner with a distinct EnvContext (vector_index 0..n-1) for each of its envs, and
    RLlib's default connector pipelines fused where they are the defaults (`lean_connectors`)."""

    lean_connectors = True

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self.lean = (
            self.lean_connectors
            and self.env is not None
            and can_be_lean(
                self._env_to_module,
                self._module_to_env,
                self.module,
                self.env.single_observation_space,
                self.env.single_action_space,
            )
        )
        if self.lean:
            self._env_to_module = LeanEnvToModule.of(self._env_to_module, self._device)
            self._module_to_env = LeanModuleToEnv.of(
                self._module_to_env,
                self.env.single_action_space,
                normalize=self.config.normalize_actions,
                clip=self.config.clip_actions,
            )

    def make_env(self) -> None:
        env_name = self.config.env
        if not (isinstance(env_name, str) and _global_registry.contains(ENV_CREATOR, env_name)):
            return super().make_env()  # not an env registered by name: RLlib's own way
        if self.env is not None:
            try:
                self.env.close()
            except Exception as e:  # as RLlib does: a failing close must not stop the new envs
                log.warning("closing the old envs failed: %s", e)
        creator = _global_registry.get(ENV_CREATOR, env_name)
        env_config = self.config.env_config
        num_envs = self.config.num_envs_per_env_runner
        worker, workers = self.worker_index or 0, self.num_workers or 0  # None on a runner built by hand
        contexts = [
            env_context(env_config, worker, i, workers, self.config.remote_worker_envs)
            for i in range(num_envs)
        ]
        fns = [functools.partial(_build, creator, ctx) for ctx in contexts]
        mode = gym.VectorizeMode(self.config.gym_env_vectorize_mode)
        if mode != gym.VectorizeMode.SYNC:
            raise ValueError(
                f"gym_env_vectorize_mode {mode.value!r}: CarlaEnvRunner steps its envs in one sync vector "
                "env; leave gym_env_vectorize_mode at 'sync' (use more runners for more processes)"
            )
        self.env = ListInfoSyncVectorEnv(fns)
        self.num_envs = self.env.num_envs
        self._needs_initial_reset = True
        make_callback(
            "on_environment_created",
            callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_environment_created,
            kwargs=dict(
                env_runner=self,
                metrics_logger=self.metrics,
                env=self.env.unwrapped,
                env_context=contexts[0],
            ),
        )

    def make_module(self) -> None:
        super().make_module()
        if self.module is not None:
            # Inference only: left in training mode, every forward pass would switch the whole module
            # to eval and back (RLlib's TorchRLModule.forward_exploration/inference), each step.
            self.module.eval()


class StockConnectorsEnvRunner(CarlaEnvRunner):
    """CarlaEnvRunner with RLlib's connector pipelines as they are: the reference the lean ones are
    tested and benchmarked against."""

    lean_connectors = False
