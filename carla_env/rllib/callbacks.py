"""RLlib callbacks: the env's driving metrics, logged at episode end (averaged by the MetricsLogger)."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from carla_env.metrics import DrivingMetrics

# The names the env reports in info (the server's only on the CARLA backend).
METRICS = (*DrivingMetrics().summary(), "server_restarts", "tick_ms_mean", "tick_ms_max")


class DrivingMetricsCallback(RLlibCallback):
    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        info = episode.get_infos(-1)
        if metrics_logger is None or not isinstance(info, dict):
            return
        for key in METRICS:
            if key in info:
                metrics_logger.log_value(key, float(info[key]), reduce="mean", window=100)
