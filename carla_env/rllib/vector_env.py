"""The vector env a CarlaEnvRunner steps: gymnasium's SyncVectorEnv, its infos a list of the envs' dicts.

RLlib's runner reads one info dict per env. Gymnasium batches infos into a dict of per-key arrays (and
RLlib's DictInfoToList wrapper splits them back), which for the driving metrics' dozen keys costs
about a tenth of an embedded env's step. Here each env's dict is passed through as it is. Autoreset
is gymnasium's next-step mode, the one RLlib's runner expects: the step after an episode's end
resets that env (reward 0, not done) and returns its first observation.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, iterate


class ListInfoSyncVectorEnv(SyncVectorEnv):
    def __init__(self, env_fns, copy: bool = True) -> None:
        super().__init__(env_fns, copy=copy, autoreset_mode=AutoresetMode.NEXT_STEP)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        if options is not None and "reset_mask" in options:
            raise ValueError("ListInfoSyncVectorEnv.reset resets all envs; reset_mask is not supported")
        seeds = (
            seed
            if isinstance(seed, list)
            else [None if seed is None else seed + i for i in range(self.num_envs)]
        )
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        self._terminations = np.zeros((self.num_envs,), dtype=np.bool_)
        self._truncations = np.zeros((self.num_envs,), dtype=np.bool_)
        self._autoreset_envs = np.zeros((self.num_envs,), dtype=np.bool_)
        infos = []
        for i, (env, env_seed) in enumerate(zip(self.envs, seeds, strict=True)):
            self._env_obs[i], info = env.reset(seed=env_seed, options=options)
            infos.append(info)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return (deepcopy(self._observations) if self.copy else self._observations), infos

    def step(self, actions):
        infos = []
        for i, (action, env) in enumerate(zip(iterate(self.action_space, actions), self.envs, strict=True)):
            if self._autoreset_envs[i]:
                self._env_obs[i], info = env.reset()
                self._rewards[i] = 0.0
                self._terminations[i] = False
                self._truncations[i] = False
            else:
                obs, reward, terminated, truncated, info = env.step(action)
                self._env_obs[i] = obs
                self._rewards[i], self._terminations[i], self._truncations[i] = reward, terminated, truncated
            infos.append(info)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (
            deepcopy(self._observations) if self.copy else self._observations,
            np.copy(self._rewards),
            np.copy(self._terminations),
            np.copy(self._truncations),
            infos,
        )
