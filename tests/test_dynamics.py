import carla
import numpy as np
import pytest

from carla_env.embedded import EmbeddedWorld
from carla_env.maps import load_town


@pytest.fixture
def world():
    return EmbeddedWorld(load_town("GridTown01"), seed=0)


def spawn_hero(world, yaw=0.0):
    # Far from the lanes: dynamics alone, no traffic in the way.
    bp = world.get_blueprint_library().find("vehicle.tesla.model3")
    return world.spawn_actor(bp, carla.Transform(carla.Location(x=-500.0, y=-500.0), carla.Rotation(yaw=yaw)))


def drive(world, hero, control, seconds):
    for _ in range(int(seconds / world.delta_seconds)):
        hero.apply_control(control)
        world.tick()


def speed(v: carla.Vector3D) -> float:
    return float(np.hypot(v.x, v.y))


def test_full_throttle_reaches_a_plausible_speed(world):
    hero = spawn_hero(world)
    drive(world, hero, carla.VehicleControl(throttle=1.0), 5.0)
    v5 = speed(hero.get_velocity())
    assert 12.0 < v5 < 22.0  # 0-100 km/h in ~6-9 s, like a mid-size car in CARLA
    drive(world, hero, carla.VehicleControl(throttle=1.0), 25.0)
    assert 30.0 < speed(hero.get_velocity()) < 50.0
    loc = hero.get_location()
    assert loc.x > -500.0 and abs(loc.y + 500.0) < 1e-6  # yaw 0 drives along +x


def test_brake_stops_the_car_in_a_plausible_distance(world):
    hero = spawn_hero(world)
    drive(world, hero, carla.VehicleControl(throttle=1.0), 6.0)
    v0 = speed(hero.get_velocity())
    x0 = hero.get_location().x
    drive(world, hero, carla.VehicleControl(brake=1.0), 6.0)
    assert speed(hero.get_velocity()) == 0.0
    braking = hero.get_location().x - x0
    assert v0**2 / (2 * 10.0) < braking < v0**2 / (2 * 6.0)
    drive(world, hero, carla.VehicleControl(brake=1.0), 1.0)
    assert speed(hero.get_velocity()) == 0.0  # braking never drives backwards


def test_positive_steer_turns_right_in_carlas_left_handed_frame(world):
    hero = spawn_hero(world)
    drive(world, hero, carla.VehicleControl(throttle=0.5, steer=0.3), 3.0)
    # CARLA: x forward, y to the right; a right turn increases yaw and moves towards +y.
    assert hero.get_transform().rotation.yaw > 10.0
    assert hero.get_location().y > -500.0
    assert hero.get_angular_velocity().z > 0


def test_steering_is_limited_at_speed(world):
    hero = spawn_hero(world)
    drive(world, hero, carla.VehicleControl(throttle=1.0), 8.0)
    yaw0 = hero.get_transform().rotation.yaw
    drive(world, hero, carla.VehicleControl(throttle=0.3, steer=1.0), 0.5)
    v = speed(hero.get_velocity())
    rate = np.radians(hero.get_transform().rotation.yaw - yaw0) / 0.5
    assert v * rate < 8.0 + 0.5  # lateral acceleration capped near the tyre limit


def test_reverse_and_hand_brake(world):
    hero = spawn_hero(world)
    drive(world, hero, carla.VehicleControl(throttle=0.6, reverse=True), 3.0)
    assert hero.get_location().x < -500.0 - 3.0
    assert hero.get_velocity().x < 0
    drive(world, hero, carla.VehicleControl(hand_brake=True), 3.0)
    assert speed(hero.get_velocity()) == 0.0
