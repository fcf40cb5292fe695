"""Reference drivers that need no training: a lane follower (demos, benchmarks) and the route autopilot
(the baseline every policy is scored against, and the teacher of bench/imitation.py)."""

from carla_env.agents.lane_follower import LaneFollower
from carla_env.agents.pursuit import MAX_WHEEL_ANGLE, pure_pursuit_steer
from carla_env.agents.route_autopilot import RouteAutopilot

__all__ = ["MAX_WHEEL_ANGLE", "LaneFollower", "RouteAutopilot", "pure_pursuit_steer"]
