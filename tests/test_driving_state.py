"""One driving state per step (route progress by a forward-only tracker), and routes of the length asked."""

import dataclasses
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from carla_env.config import load_config
from carla_env.driving_state import (
    ROUTE_DONE_MARGIN,
    TRACK_AHEAD,
    WALKER_PREDICTION_TIMES,
    RouteTracker,
    walker_gap,
)
from carla_env.env import CarlaEnv
from carla_env.maps.route import Route, random_route
from carla_env.maps.town import load_town
from tests.conftest import REAL_TOWNS, real_town_path

PPO = "experiments/ppo/config.yaml"
HELD_OUT = "grid:seed=101,columns=5,rows=5"


def embedded_env(**simulator) -> CarlaEnv:
    return CarlaEnv(load_config(PPO, {"simulator": {"backend": "embedded", **simulator}}))


def beside_route(route: Route, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Points `offset` metres left of each distinct route point (CARLA frame: y points right of +x)
    and their distance along the route."""
    keep = np.concatenate([[True], np.diff(route.distance) > 1e-6])
    pts, dist = route.points[keep], route.distance[keep]
    d = np.diff(pts, axis=0)
    d = np.vstack([d, d[-1:]]) / np.linalg.norm(np.vstack([d, d[-1:]]), axis=1)[:, None]
    return pts + offset * np.column_stack([d[:, 1], -d[:, 0]]), dist


def test_progress_does_not_jump_ahead_where_a_route_passes_near_itself():
    """A 1.5 km route on a small town drives some streets twice; half a metre left of the lane
    centre on the first pass is nearer the second pass, where a whole-route search jumps to."""
    g = load_town("GridTown01").lanes
    start = int(np.flatnonzero(g.lane_main & ~g.is_junction)[0])
    route = random_route(g, (start, 5.0), 1500.0, np.random.default_rng(0))
    drive, true_progress = beside_route(route, 0.5)
    whole_route = np.array([route.progress(xy) for xy in drive])
    assert (whole_route - true_progress).max() > 100.0, (
        "the route must pass near itself, or this shows nothing"
    )

    tracker = RouteTracker(route)
    last = drive[0]
    for xy, truth in zip(drive, true_progress, strict=True):
        k, deviation = tracker.update(xy, float(np.linalg.norm(xy - last)))
        last = xy
        assert abs(route.distance[k] - truth) < 1.5 and deviation < 1.0
    assert route.distance[tracker.index] > route.length - ROUTE_DONE_MARGIN  # and it reaches the end


def test_a_reversing_or_wandering_car_keeps_its_progress():
    g = load_town("GridTown01").lanes
    route = random_route(g, (int(np.flatnonzero(g.lane_main)[0]), 0.0), 250.0, np.random.default_rng(1))
    tracker = RouteTracker(route)
    for i in range(0, 60, 2):
        tracker.update(route.points[i], 2.0)
    k = tracker.index
    assert tracker.update(route.points[10], 0.0)[0] == k  # back where it was: progress stays
    off_route = route.points.min(axis=0) - 50.0  # over 50 m from every route point
    index, deviation = tracker.update(off_route, 1.0)
    assert deviation > 50.0  # the deviation shows; the match moves at most the window ahead
    assert 0 <= route.distance[index] - route.distance[k] <= TRACK_AHEAD + 1.0


@pytest.fixture
def counted_searches(monkeypatch):
    calls = []
    nearest = Route.nearest

    def counting(self, xy, window=None):
        calls.append(window)
        return nearest(self, xy, window)

    monkeypatch.setattr(Route, "nearest", counting)
    return calls


def test_one_bounded_nearest_point_search_per_step(counted_searches):
    env = embedded_env()
    env.reset(seed=3)
    counted_searches.clear()
    steps = 0
    for _ in range(50):
        _, _, terminated, truncated, _ = env.step(np.array([0.0, 0.5], np.float32))
        steps += 1
        if terminated or truncated:
            break
    env.close()
    assert len(counted_searches) == steps
    assert all(w is not None and w[1] - w[0] < 40 for w in counted_searches)  # a window, not the route


def test_same_state_and_metrics_as_the_whole_route_search_on_a_normal_route():
    """On a route that does not pass near itself the tracker agrees with the whole-route search at
    every step, so reward, done check and metrics are those of the old per-step searches."""
    env = embedded_env()
    env.reset(seed=3)
    route, best, metrics_seen = env.experiment.route, 0.0, 0
    for _ in range(80):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.4], np.float32))
        state, loc = env.experiment.driving_state, env.core.hero.get_location()
        k, dist = route.nearest((loc.x, loc.y))
        best = max(best, route.distance[k])
        assert state.progress == pytest.approx(best) and state.route_deviation == pytest.approx(dist)
        assert info["route_completion"] == pytest.approx(min(best / route.length, 1.0))
        metrics_seen += 1
        if terminated or truncated:
            break
    env.close()
    assert best > 20.0 and metrics_seen > 30


def _towns():
    return ["GridTown01", HELD_OUT, *(f"real:{name}" for name in REAL_TOWNS)]


@pytest.mark.parametrize("town", _towns())
@pytest.mark.parametrize("length", [250.0, 5000.0])
def test_routes_from_spawn_slots_across_the_town_have_the_length_asked(town, length):
    """The route is the drive itself, so from the slots the hero spawns at (60 spread over the town;
    all of them took ~3.5 s a town at 5 km, done once by hand) it is within 10 % of
    `route_length` (the shortest path to its end was 9-42 m for a few seeds, 212-484 m for 5 km)."""
    generated = not town.startswith("real:")
    town = load_town(town if generated else real_town_path(town[5:]))
    rng = np.random.default_rng(0)
    lanes, ss = town.spawn_candidates()
    for lane, s in list(zip(lanes, ss, strict=True))[:: max(1, len(lanes) // 60)]:
        route = random_route(town.lanes, (int(lane), float(s)), length, rng)
        assert abs(route.length - length) <= 0.1 * length and not route.shortfall
        if generated and length == 250.0:  # a turn that would drive a lane twice is drawn again
            assert len(set(route.sequence)) == len(route.sequence)
        for a, b in zip(route.sequence, route.sequence[1:], strict=False):
            assert b in town.lanes.successors(a)


def test_a_dead_end_gives_a_shorter_route_that_says_why():
    """Lanes A -> B where B leads nowhere (a custom map's dead end): the route is what there is."""
    g = load_town("GridTown01").lanes
    a = 0
    b = int(g.successors(a)[0])
    main = int(next(k for k in np.flatnonzero(g.lane_main) if k not in (a, b)))
    succ = [list(g.successors(k)) for k in range(g.num_lanes)]
    succ[a], succ[b] = [b], []
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in succ])]).astype(np.int32)
    only_main = g.lane_main.copy()
    only_main[[a, b]] = False
    dead = dataclasses.replace(
        g, succ_ptr=ptr, succ_idx=np.array([x for row in succ for x in row], np.int32), lane_main=only_main
    )
    route = random_route(dead, (a, 0.0), 250.0, np.random.default_rng(0))
    assert route.sequence == [a, b]
    assert route.length == pytest.approx(g.lane_length[a] + g.lane_length[b], abs=1.0)
    assert route.shortfall.startswith(f"route_length: {route.length:.0f} m of the 250 m asked")
    assert "dead end" in route.shortfall

    # Where a way on exists, the walk takes it: A -> [B (dead end), a main lane].
    succ[a] = [b, main]
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in succ])]).astype(np.int32)
    branching = dataclasses.replace(
        dead, succ_ptr=ptr, succ_idx=np.array([x for r in succ for x in r], np.int32)
    )
    for seed in range(10):
        route = random_route(branching, (a, 0.0), 250.0, np.random.default_rng(seed))
        assert route.sequence[1] == main and not route.shortfall


def test_traffic_the_town_cannot_hold_is_said_once_in_the_log_and_in_info(caplog):
    env = embedded_env(traffic={"vehicles": 300})
    with caplog.at_level(logging.WARNING, logger="carla_env.env"):
        notes = [env.reset(seed=seed)[1]["not_honoured"] for seed in range(3)]
        spawned = len(env.core.world.get_actors().filter("vehicle.*")) - 1
    env.close()
    said = re.compile(r"traffic.vehicles: (\d+) of the 300 asked were spawned: GridTown01 has no more free")
    counts = [int(said.match(n).group(1)) for episode in notes for n in episode if said.match(n)]
    assert len(counts) == 3 and all(60 < c < 300 for c in counts) and counts[-1] == spawned
    assert len(caplog.records) == 1 and said.match(caplog.records[0].getMessage())  # once, not per episode

    env = embedded_env(traffic={"vehicles": 30})
    info = env.reset(seed=0)[1]
    env.close()
    assert "not_honoured" not in info


def test_a_route_shortfall_reaches_the_episode_info(monkeypatch):
    from carla_env import experiment

    def dead_end_route(lanes, start, length, rng):
        route = random_route(lanes, start, 40.0, rng)
        route.shortfall = "route_length: 40 m of the 250 m asked: every way on ... (a dead end)"
        return route

    monkeypatch.setattr(experiment, "random_route", dead_end_route)
    env = embedded_env()
    info = env.reset(seed=0)[1]
    env.close()
    assert info["not_honoured"] == ["route_length: 40 m of the 250 m asked: every way on ... (a dead end)"]


def test_route_length_bench_prints_the_distribution():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "bench/route_lengths.py", "--towns", "GridTown01", "--seeds", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])["GridTown01"]
    assert out["outside_10pct"] == 0 and out["under_50pct"] == 0 and 225 <= out["min"] <= out["max"] <= 275


def test_walker_gap_is_the_route_distance_of_the_first_point_a_walker_reaches_now_or_within_3_s():
    """The compiled walker_gap against the plain numpy statement of it, on winding routes with walkers
    anywhere (near the path, walking across it, standing still), the search window at the route's
    start and past its end included."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(3, 120))
        heading = np.cumsum(rng.normal(0, 0.05, n))
        points = np.cumsum(
            np.column_stack([np.cos(heading), np.sin(heading)]) * rng.uniform(0.2, 2.0), axis=0
        )
        distance = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
        route = SimpleNamespace(points=points, distance=distance)  # what walker_gap reads of a Route
        here = float(rng.uniform(-5, distance[-1] + 3))
        m = int(rng.integers(0, 8))
        xy = points[rng.integers(n, size=m)] + rng.normal(0, 3, (m, 2))
        velocity = rng.normal(0, 1.5, (m, 2)) * (rng.random((m, 1)) < 0.7)
        half_width, clearance = float(rng.uniform(0.8, 1.2)), 0.8
        window = (route.distance > here) & (route.distance < here + 30.0)
        paths = xy[:, None, :] + velocity[:, None, :] * WALKER_PREDICTION_TIMES[None, :, None]
        d2 = ((points[window][None, None] - paths[:, :, None]) ** 2).sum(axis=-1)
        on_path = d2 < (half_width + clearance) ** 2
        expected = route.distance[window][on_path.any(axis=(0, 1))].min() - here if on_path.any() else None
        assert walker_gap(xy, velocity, route, here, half_width, clearance) == expected
    with pytest.raises(ValueError, match="2 walker positions but 0 velocities"):
        walker_gap(np.zeros((2, 2)), np.zeros((0, 2)), route, 0.0, 1.0)
