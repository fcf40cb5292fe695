"""CARLA's vehicle conventions that both backends, the agents and the experiments share."""

from __future__ import annotations

import math

# CARLA's default max_steer_angle of a car's front wheels: steer = +-1 turns them this far.
MAX_WHEEL_ANGLE = math.radians(70.0)
