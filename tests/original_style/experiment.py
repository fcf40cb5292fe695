"""An experiment written against the original carla-simulator/rllib-integration API, for the tests
of carla_env.compat: the original's imports, gym spaces, config dict, hook signatures and one `done`.
Written for these tests in the original's style; nothing in it knows about carla_env."""

import math

import carla
import numpy as np
from gym.spaces import Box, Discrete
from rllib_integration.base_experiment import BaseExperiment
from rllib_integration.helper import post_process_image


class LaneFollowExperiment(BaseExperiment):
    def __init__(self, config):
        super().__init__(config)  # self.config: this config over the base experiment's defaults
        self.frame_stack = self.config["others"]["framestack"]
        self.max_idle_steps = self.config["others"]["max_idle_steps"]
        self.allowed_lanes = [carla.LaneType.Driving]

    def reset(self):
        self.idle_steps = 0
        self.collided = False
        self.frames = []
        self.last_location = None

    def get_action_space(self):
        return Discrete(len(self.get_actions()))

    def get_observation_space(self):
        size = self.config["hero"]["sensors"]["birdview"]["size"]
        return Box(low=0, high=255, shape=(size, size, 3 * self.frame_stack), dtype=np.uint8)

    def get_actions(self):
        return {
            0: [0.5, 0.0, 0.0],  # throttle, steer, brake
            1: [0.5, -0.3, 0.0],
            2: [0.5, 0.3, 0.0],
            3: [0.0, 0.0, 0.0],
            4: [0.0, 0.0, 1.0],
        }

    def compute_action(self, action):
        throttle, steer, brake = self.get_actions()[int(action)]
        return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)

    def get_observation(self, sensor_data):
        image = post_process_image(sensor_data["birdview"][1], normalized=False, grayscale=False)
        self.collided = "collision" in sensor_data
        if not self.frames:
            self.frames = [image] * self.frame_stack
        self.frames = self.frames[1:] + [image]
        return np.concatenate(self.frames, axis=2), {"collided": self.collided}

    def get_speed(self, hero):
        velocity = hero.get_velocity()
        return 3.6 * math.sqrt(velocity.x**2 + velocity.y**2 + velocity.z**2)

    def get_done_status(self, observation, core):
        hero = core.hero
        self.idle_steps = self.idle_steps + 1 if self.get_speed(hero) < 1.0 else 0
        fell = hero.get_location().z < -0.5
        return self.collided or fell or self.idle_steps > self.max_idle_steps

    def compute_reward(self, observation, core):
        hero = core.hero
        location = hero.get_location()
        if self.last_location is None:
            self.last_location = location
        reward = location.distance(self.last_location)
        self.last_location = location

        waypoint = core.map.get_waypoint(location, project_to_road=False, lane_type=carla.LaneType.Any)
        if waypoint is None or waypoint.lane_type not in self.allowed_lanes:
            reward -= 0.5
        elif not waypoint.is_junction:
            heading = hero.get_transform().get_forward_vector()
            lane = waypoint.transform.get_forward_vector()
            if heading.x * lane.x + heading.y * lane.y < 0:
                reward -= 0.5  # against the lane's direction
        if self.collided:
            reward -= 10.0
        return reward
