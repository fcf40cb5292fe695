"""The reference drivers' one pure-pursuit law: CARLA's steer sign convention and its limits."""

import math

import carla
import pytest

from carla_env.agents import MAX_WHEEL_ANGLE, pure_pursuit_steer


def pose(x=0.0, y=0.0, yaw=0.0) -> carla.Transform:
    return carla.Transform(carla.Location(x, y, 0.0), carla.Rotation(yaw=yaw))


def test_straight_ahead_is_no_steer_and_sides_are_symmetric():
    assert pure_pursuit_steer(pose(), 10.0, 0.0, 2.88) == 0.0
    right, left = pure_pursuit_steer(pose(), 10.0, 2.0, 2.88), pure_pursuit_steer(pose(), 10.0, -2.0, 2.88)
    # CARLA is left-handed: +y is to the right of a car heading +x, and positive steer turns right.
    assert right > 0 and left == pytest.approx(-right)


def test_the_arc_through_the_target_and_the_clip():
    # Target at 10 m and 30 degrees: the arc's wheel angle is atan(2 L sin(alpha) / d).
    target = (10 * math.cos(math.radians(30)), 10 * math.sin(math.radians(30)))
    wheel = math.atan(2 * 2.88 * math.sin(math.radians(30)) / 10)
    assert pure_pursuit_steer(pose(), *target, 2.88) == pytest.approx(wheel / MAX_WHEEL_ANGLE)
    # The heading counts: the same target seen from a car already facing it needs no steer.
    assert pure_pursuit_steer(pose(yaw=30.0), *target, 2.88) == pytest.approx(0.0, abs=1e-9)
    assert pure_pursuit_steer(pose(), 0.1, 1.0, 2.88) == 1.0  # beyond full lock: clipped


def drive_towards_a_standing_walker(
    with_walker: bool, steps: int = 150, driver=None, options=None, blueprint="walker.pedestrian.0001"
):
    """A driver (the autopilot unless given: action(hero, route) -> [steer, acceleration]) on an empty
    GridTown01 (no traffic) along its route; a walker (or the actor of `blueprint`, heading along the
    route) stands on the route 30 m ahead, or not. Returns
    (route distance of that spot, the hero's furthest progress, the least distance between the hero's
    centre and the spot, the rewards of the steps)."""
    import numpy as np

    from carla_env.agents import RouteAutopilot
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv

    config = load_config(
        "experiments/ppo/config.yaml",
        {
            "simulator": {"backend": "embedded", "traffic": {"vehicles": 0}, "carla": {"walkers": 0}},
            "experiment": {"options": options or {}},
        },
    )
    env = CarlaEnv(config)
    env.reset(seed=3)
    route, hero = env.experiment.route, env.core.hero
    here = route.progress((hero.get_location().x, hero.get_location().y))
    k = int(np.searchsorted(route.distance, here + 30.0))
    x, y = route.points[k, :2]
    if with_walker:
        lib = env.core.world.get_blueprint_library()
        yaw = math.degrees(float(route.headings[k]))
        env.core.world.spawn_actor(
            lib.find(blueprint),
            carla.Transform(carla.Location(float(x), float(y), 1.0), carla.Rotation(yaw=yaw)),
        )
    if driver is None:
        autopilot = RouteAutopilot()
        driver = lambda hero, route: autopilot.action(hero, route, config.simulator.timestep)  # noqa: E731
    furthest, closest, rewards = here, math.inf, []
    for _ in range(steps):
        _, reward, terminated, truncated, _ = env.step(driver(hero, route))
        rewards.append(reward)
        loc = hero.get_location()
        furthest = max(furthest, route.progress((loc.x, loc.y)))
        closest = min(closest, math.hypot(loc.x - x, loc.y - y))
        if terminated or truncated:
            break
    env.close()
    return float(route.distance[k]), furthest, closest, rewards


def test_the_autopilot_stops_for_a_pedestrian_on_its_path():
    at, furthest, _, _ = drive_towards_a_standing_walker(with_walker=False)
    assert furthest > at + 10  # without the walker it drives past that point
    at, furthest, closest, _ = drive_towards_a_standing_walker(with_walker=True)
    assert furthest < at - 2.5  # it stopped with its front short of the walker
    assert closest > 3.0


def test_walker_speed_penalty_prices_driving_at_a_walker_too_fast_to_stop_and_not_the_autopilot():
    """The reward's walker_speed_penalty: a driver that keeps the throttle on towards a walker standing
    on its route pays it, step after step before it hits; the autopilot, which stops short, does not."""
    from carla_env.agents import RouteAutopilot

    autopilot = RouteAutopilot()

    def reckless(hero, route):  # the autopilot's steering, the throttle held at 0.6
        return [float(autopilot.action(hero, route, 0.1)[0]), 0.6]

    penalty, no_penalty = {"walker_speed_penalty": 1.0}, {"walker_speed_penalty": 0.0}
    _, _, _, fined = drive_towards_a_standing_walker(True, driver=reckless, options=penalty)
    _, _, _, free = drive_towards_a_standing_walker(True, driver=reckless, options=no_penalty)
    extra = [a - b for a, b in zip(free, fined, strict=True)]  # the penalty, step by step
    assert len(fined) < 150  # it hit the walker: the episode ended
    assert sum(e > 0.05 for e in extra) >= 5 and sum(extra) > 3.0
    _, _, _, fined = drive_towards_a_standing_walker(True, options=penalty)
    _, _, _, free = drive_towards_a_standing_walker(True, options=no_penalty)
    assert sum(a - b for a, b in zip(free, fined, strict=True)) < 0.2


def test_vehicle_speed_penalty_prices_driving_at_a_standing_car_too_fast_to_stop_and_not_the_autopilot():
    """The reward's vehicle_speed_penalty: a driver that keeps the throttle on towards a car standing on
    its route pays it, step after step before it hits; the autopilot, which stops behind it, does not."""
    from carla_env.agents import RouteAutopilot

    autopilot, car = RouteAutopilot(), "vehicle.tesla.model3"

    def reckless(hero, route):  # the autopilot's steering, the throttle held at 0.6
        return [float(autopilot.action(hero, route, 0.1)[0]), 0.6]

    penalty, no_penalty = {"vehicle_speed_penalty": 1.0}, {"vehicle_speed_penalty": 0.0}
    _, _, _, fined = drive_towards_a_standing_walker(True, driver=reckless, options=penalty, blueprint=car)
    _, _, _, free = drive_towards_a_standing_walker(True, driver=reckless, options=no_penalty, blueprint=car)
    extra = [a - b for a, b in zip(free, fined, strict=True)]
    assert len(fined) < 150  # it hit the car: the episode ended
    assert sum(e > 0.05 for e in extra) >= 5 and sum(extra) > 3.0
    at, furthest, _, fined = drive_towards_a_standing_walker(True, options=penalty, blueprint=car)
    _, _, _, free = drive_towards_a_standing_walker(True, options=no_penalty, blueprint=car)
    assert len(fined) == 150 and furthest < at - 4.0  # the autopilot stopped behind the car
    assert sum(a - b for a, b in zip(free, fined, strict=True)) < 0.2


def charged_per_step(option: str, reckless: bool, steps: int = 400) -> list[float]:
    """What reward `option` at weight 1 charges at each of `steps` steps along the test route (with
    turns): the autopilot driving, or (reckless) its steering with the throttle held at 0.7."""
    from carla_env.agents import RouteAutopilot

    autopilot = RouteAutopilot()

    def throttle_held(hero, route):
        return [float(autopilot.action(hero, route, 0.1)[0]), 0.7]

    runs = []
    for weight in (1.0, 0.0):
        autopilot.reset()
        *_, rewards = drive_towards_a_standing_walker(
            False, steps=steps, driver=throttle_held if reckless else None, options={option: weight}
        )
        runs.append(rewards)
    return [b - a for a, b in zip(*runs, strict=True)]


def test_cornering_penalty_prices_a_turn_taken_too_fast_and_hardly_the_autopilot():
    """cornering_penalty: the autopilot, which slows for bends, pays almost nothing over 400 steps with
    turns; the same steering with the throttle held at 0.7 takes the first turn too fast and pays."""
    assert sum(charged_per_step("cornering_penalty", reckless=False)) < 1.0
    assert sum(charged_per_step("cornering_penalty", reckless=True)) > 2.0


def test_curvature_ahead_finds_a_bend_and_no_bend_at_the_routes_end():
    """A straight 100 m route heading north, then one turning right on a 10 m radius after 50 m: the
    bend is found 1/10 m^-1 where it starts; near the end of the straight one there is none (samples
    past the end once made the last heading look like a sharp bend, and charged every route's end)."""
    from types import SimpleNamespace

    import numpy as np

    from carla_env.driving_state import curvature_ahead

    def route(points):
        d = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
        return SimpleNamespace(points=points, distance=d, length=float(d[-1]))

    y = np.arange(0.0, 100.5, 0.5)
    straight = route(np.column_stack([np.zeros_like(y), y]))
    for here in (0.0, 75.0, 90.0, 97.0, 99.9):
        ahead, k = curvature_ahead(straight, here, 30.0)
        assert np.all(k < 1e-9) and np.all(ahead + here <= 100.0), here
    arc = np.linspace(0.0, np.pi / 2, 60)[1:]
    bend = route(np.vstack([np.column_stack([np.zeros(101), np.arange(0.0, 50.5, 0.5)]),
                            np.column_stack([10.0 - 10.0 * np.cos(arc), 50.0 + 10.0 * np.sin(arc)])]))  # fmt: skip
    ahead, k = curvature_ahead(bend, 30.0, 30.0)
    assert k.max() == pytest.approx(0.1, rel=0.05)
    assert ahead[np.argmax(k > 0.05)] == pytest.approx(20.0, abs=2.5)  # the bend starts 20 m on


def test_curve_speed_penalty_prices_a_bend_taken_too_fast_and_not_the_autopilot():
    """curve_speed_penalty: the autopilot, which plans its bends at 2 m/s^2, pays nothing over 400
    steps with turns; the same steering with the throttle held at 0.7 pays before and in the first
    bend, which it leaves the road in."""
    assert sum(charged_per_step("curve_speed_penalty", reckless=False)) < 0.05
    charged = charged_per_step("curve_speed_penalty", reckless=True)
    assert sum(c > 0.01 for c in charged) >= 10 and sum(charged) > 3.0


def test_steer_change_penalty_charges_each_steps_steer_travel_as_the_car_applies_it():
    """steer_change_penalty: the same episode (a reward term changes no dynamics) with and without it
    differs, step by step, by the penalty times |steer - the previous step's steer|, the steer clipped
    to [-1, 1] as the car applies it; the first step of an episode has no previous steer."""
    import numpy as np

    from carla_env.agents import RouteAutopilot

    def run(options):
        autopilot, steers = RouteAutopilot(), []

        def dithering(hero, route):  # the autopilot swinging 1.5 past its steer, left then right
            steer, accel = autopilot.action(hero, route, 0.1)
            steers.append(float(steer) + (1.5 if len(steers) % 2 else -1.5))
            return [steers[-1], float(accel)]

        *_, rewards = drive_towards_a_standing_walker(False, steps=60, driver=dithering, options=options)
        return np.clip(steers, -1.0, 1.0), np.array(rewards)

    steers, free = run({"steer_change_penalty": 0.0})
    same_steers, fined = run({"steer_change_penalty": 0.1})
    assert np.array_equal(steers, same_steers) and len(free) == 60
    expected = 0.1 * np.abs(np.diff(steers, prepend=steers[0]))
    assert np.allclose(free - fined, expected, atol=1e-9) and expected.sum() > 5.0


def test_the_rewards_vehicle_gap_sees_a_car_turning_across_the_path_before_it_is_on_it():
    """vehicle_gap with velocities (the reward's): a car heading across the path 6 m to its side is in
    the way where it will be within a second; the same car standing, one driving away from the path and
    an oncoming one in the next lane are not; without velocities (the autopilot's) only boxes on it are."""
    from types import SimpleNamespace

    import numpy as np

    from carla_env.driving_state import vehicle_gap

    x = np.arange(0.0, 60.0, 0.5)
    route = SimpleNamespace(
        points=np.column_stack([x, np.zeros_like(x)]), distance=x, headings=np.zeros_like(x)
    )
    ego = (0.0, 0.0, 0.0, 2.4, 1.0)
    crossing = np.array([[20.0, 6.0, -math.pi / 2, 2.4, 1.0]])  # nose towards the path, 6 m off it

    def gap(boxes, velocities=None):
        return vehicle_gap(
            route, 0.0, ego, boxes, velocities=None if velocities is None else np.array(velocities)
        )

    assert gap(crossing) is None
    assert gap(crossing, [[0.0, -8.0]]) == pytest.approx(20.0 - 1.0 - 2.4, abs=0.6)  # 8 m/s: on it in 1 s
    assert gap(crossing, [[0.0, -1.5]]) is None  # 1.5 m/s: its nose still 0.6 m short of the path in 1 s
    assert gap(crossing, [[0.0, 0.0]]) is None and gap(crossing, [[0.0, 8.0]]) is None  # standing, leaving
    oncoming = np.array([[25.0, 3.5, math.pi, 2.4, 1.0]])
    assert gap(oncoming, [[-10.0, 0.0]]) is None
    leader = np.array([[15.0, 0.0, 0.0, 2.4, 1.0]])  # one ahead moving on: its box now is the gap
    assert gap(leader, [[8.0, 0.0]]) == gap(leader) == pytest.approx(15.0 - 4.8, abs=0.6)
    with pytest.raises(ValueError, match="1 boxes but 2 velocities"):
        gap(crossing, [[0.0, 0.0], [0.0, 0.0]])


def test_predict_vehicles_makes_the_vehicle_speed_penalty_price_a_car_turning_across_the_path():
    """The experiment's option: off (the shipped config), a car heading across the path 6 m to its side
    costs nothing; on, the hero at 8 m/s pays for not being able to stop short of where it will be."""
    from types import SimpleNamespace

    import numpy as np

    from carla_env.config import load_config
    from carla_env.env import CarlaEnv
    from carla_env.sensors import Scene

    env = CarlaEnv(load_config("experiments/ppo/config.yaml", {"simulator": {"backend": "embedded"}}))
    try:
        x = np.arange(0.0, 60.0, 0.5)
        experiment = env.experiment
        experiment.route = SimpleNamespace(
            points=np.column_stack([x, np.zeros_like(x)]), distance=x, headings=np.zeros_like(x)
        )
        scene = Scene(
            ego=np.array([0.0, 0.0, 0.0, 2.4, 1.0]),
            vehicles=np.array([[20.0, 6.0, -math.pi / 2, 2.4, 1.0]]),
            vehicle_velocities=np.array([[0.0, -8.0]]),
        )
        core, state = (
            SimpleNamespace(birdview_scene=lambda hero: scene, hero=None),
            SimpleNamespace(speed=12.0, progress=0.0),
        )
        assert not experiment.options.predict_vehicles
        assert experiment.speed_over_vehicle_stop(state, core) == 0.0
        experiment.options.predict_vehicles = True
        assert experiment.speed_over_vehicle_stop(state, core) == pytest.approx(
            12.0 - math.sqrt(8.0 * 16.0), abs=0.3
        )
    finally:
        env.close()


def test_the_autopilots_box_test_agrees_with_the_simulators_collision_test():
    """first_box_overlap (the autopilot's and the reward's: the car's box swept along the route against
    other vehicles') says what the embedded world's collision kernel says, over 2,000 random pairs of
    boxes near each other; along a path of poses it gives the first that touches any of several boxes."""
    import numpy as np

    from carla_env.driving_state import first_box_overlap
    from carla_env.embedded.kernels import overlapping_pairs_between

    rng = np.random.default_rng(0)
    for k in range(2000):
        xy, yaw = rng.uniform(-4, 4, (2, 2)), rng.uniform(-np.pi, np.pi, 2)
        half = rng.uniform(0.3, 3.0, (2, 2))  # length, width of each
        other = np.array([[*xy[1], yaw[1], *half[1]]])
        ours = first_box_overlap(xy[:1], yaw[:1], half[0, 0], half[0, 1], other)
        xyz, half3 = np.column_stack([xy, np.zeros(2)]), np.column_stack([half, np.ones(2)])
        pairs, _ = overlapping_pairs_between(xyz[:1], yaw[:1], half3[:1], xyz[1:], yaw[1:], half3[1:])
        assert (ours == 0) == (len(pairs) == 1), k
    for k in range(300):
        path = np.column_stack([np.linspace(0, 20, 11), rng.uniform(-1, 1, 11)])
        headings, others = (
            rng.uniform(-0.3, 0.3, 11),
            rng.uniform([0, -4, -3, 0.5, 0.5], [25, 4, 3, 3, 1.2], (3, 5)),
        )
        xyz, half3 = (
            np.column_stack([others[:, :2], np.zeros(3)]),
            np.column_stack([others[:, 3:], np.ones(3)]),
        )
        touching = [
            len(
                overlapping_pairs_between(
                    np.array([[*p, 0.0]]), h[None], np.array([[2.4, 1.5, 1.0]]), xyz, others[:, 2], half3
                )[0]
            )
            for p, h in zip(path, headings, strict=True)
        ]
        expected = next((j for j, n in enumerate(touching) if n), -1)
        assert first_box_overlap(path, headings, 2.4, 1.5, others) == expected, k
