"""Tune callback printing one concise line per training iteration (importable, so a restored run keeps it)."""

from __future__ import annotations

from ray import tune


class ProgressLine(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        env = result.get("env_runners", {})
        steps = result.get("num_env_steps_sampled_lifetime", 0)
        rate = env.get("num_env_steps_sampled", 0) / max(result.get("time_this_iter_s", 0.0), 1e-9)
        ret = env.get("episode_return_mean", float("nan"))
        completion = env.get("route_completion", float("nan"))
        print(
            f"iter {result.get('training_iteration', 0):4d}  steps {int(steps):8d}  {rate:7.1f} steps/s  "
            f"return {ret:8.2f}  route {completion:6.1%}",
            flush=True,
        )
