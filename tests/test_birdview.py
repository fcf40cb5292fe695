import carla
import numpy as np
import pytest
import torch

from carla_env.agents import LaneFollower
from carla_env.embedded import EmbeddedWorld
from carla_env.maps import load_town
from carla_env.maps.route import plan_route
from carla_env.rllib.unpack import UnpackBits
from carla_env.sensors import BirdviewRenderer, BirdviewSpec, Scene, pack, scene_from_world, unpack
from tests.conftest import real_town_path

SPEC = BirdviewSpec(
    channels=(
        "road",
        "route",
        "lane_solid",
        "lane_broken",
        "ego",
        "vehicles",
        "walkers",
        "lights_green",
        "lights_yellow",
        "lights_red",
    )
)
HL, HW = 2.4, 1.1


@pytest.fixture(scope="module")
def town():
    return load_town("GridTown03")


@pytest.fixture(scope="module")
def renderer(town):
    return BirdviewRenderer(town.lanes, SPEC)


def box(x, y, yaw):
    return np.array([x, y, yaw, HL, HW])


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


def channel(r, obs, name):
    return obs[r.index[name]]


def test_default_layout_is_roachs_and_packs_to_an_eighth():
    spec = BirdviewSpec()
    assert (spec.size, spec.pixels_per_meter, spec.ego_offset) == (192, 5.0, 40)
    assert spec.num_channels == 24
    obs = np.zeros((spec.num_channels, 192, 192), np.uint8)
    assert pack(obs).nbytes * 8 == obs.nbytes


@pytest.mark.parametrize("yaw", [0.0, 0.7, -2.5])
def test_ego_sits_at_the_configured_position_heading_up(renderer, yaw):
    obs = renderer.render(Scene(ego=box(100.0, 50.0, yaw), vehicles=np.zeros((0, 5))))
    ego = channel(renderer, obs, "ego")
    rows, cols = np.nonzero(ego)
    assert centroid(ego) == pytest.approx((192 - 40, 96), abs=1.0)
    assert rows.max() - rows.min() == pytest.approx(2 * HL * 5, abs=2)  # long axis is vertical
    assert cols.max() - cols.min() == pytest.approx(2 * HW * 5, abs=2)


@pytest.mark.parametrize("yaw", [0.0, 0.7, -2.5])
def test_vehicle_ahead_appears_above_and_vehicle_right_appears_right(renderer, yaw):
    ex, ey = 100.0, 50.0
    fwd = np.array([np.cos(yaw), np.sin(yaw)])
    right = np.array([-np.sin(yaw), np.cos(yaw)])  # CARLA is left-handed: +90 deg of yaw is the right
    ahead = np.array([ex, ey]) + 10 * fwd
    beside = np.array([ex, ey]) + 5 * right
    obs = renderer.render(Scene(ego=box(ex, ey, yaw), vehicles=np.array([box(*ahead, yaw)])))
    veh = channel(renderer, obs, "vehicles@-0.1s")
    assert centroid(veh) == pytest.approx((192 - 40 - 50, 96), abs=1.0)  # 10 m ahead = 50 px up
    obs = renderer.render(Scene(ego=box(ex, ey, yaw), vehicles=np.array([box(*beside, yaw)])))
    assert centroid(channel(renderer, obs, "vehicles@-0.1s")) == pytest.approx((192 - 40, 96 + 25), abs=1.0)


def ego_on_lane(lanes, lane, s):
    p, yaw = lanes.interpolate(np.array([lane]), np.array([s]))
    return box(p[0, 0], p[0, 1], yaw[0])


@pytest.mark.parametrize("town_name", ["GridTown03", "Town01"])
def test_road_width_in_pixels_matches_the_map(town_name):
    town = load_town(town_name if town_name.startswith("Grid") else real_town_path(town_name))
    g = town.lanes
    r = BirdviewRenderer(g, SPEC)
    # A straight two-way road with one lane each way: the road spans both lanes at the ego's row.
    for lane in np.flatnonzero(
        ~g.is_junction & (g.lane_length > 40) & (g.lane_right < 0) & (g.lane_left < 0)
    ):
        a = g.lane_start[lane]
        if np.ptp(g.yaw[a : a + g.lane_count[lane]]) < 1e-3:
            break
    obs = r.render(Scene(ego=ego_on_lane(g, lane, g.lane_length[lane] / 2), vehicles=np.zeros((0, 5))))
    road_row = channel(r, obs, "road")[192 - 40]
    assert road_row.sum() == pytest.approx(2 * g.lane_width[lane] * 5, abs=3)
    # The centre line (the lane's left edge) is drawn in the channel of its OpenDRIVE marking type.
    mark = carla.LaneMarkingType.values[int(g.mark_left[g.lane_start[lane] + g.lane_count[lane] // 2])]
    kind = "lane_solid" if "Solid" in str(mark) else "lane_broken"
    other = "lane_broken" if kind == "lane_solid" else "lane_solid"
    centre_col = int(round(96 - g.lane_width[lane] / 2 * 5))
    band = slice(192 - 40 - 10, 192 - 40 + 10)
    assert channel(r, obs, kind)[band, centre_col - 2 : centre_col + 3].any()
    assert not channel(r, obs, other)[band, centre_col - 2 : centre_col + 3].any()


def test_lights_land_in_their_colour_channel(town, renderer):
    g = town.lanes
    lane = int(np.flatnonzero(g.lane_light >= 0)[0])
    ego = ego_on_lane(g, lane, g.lane_length[lane] - 10.0)
    for state, name in ((0, "lights_red"), (1, "lights_yellow"), (2, "lights_green")):
        states = np.full(len(g.light_id), -1)
        states[g.lane_light[lane]] = state
        obs = renderer.render(Scene(ego=ego, vehicles=np.zeros((0, 5)), light_states=states))
        lit = channel(renderer, obs, f"{name}@-0.1s")
        assert lit.any()
        assert centroid(lit)[0] == pytest.approx(192 - 40 - 50, abs=3)  # stop line 10 m ahead
        others = [n for n in ("lights_red", "lights_yellow", "lights_green") if n != name]
        assert not any(channel(renderer, obs, f"{n}@-0.1s").any() for n in others)


def test_history_channels_show_past_positions(town):
    r = BirdviewRenderer(town.lanes, SPEC, delta_seconds=0.05)
    assert r.history_ticks == [30, 20, 10, 0]
    ego = box(0.0, 0.0, 0.0)
    for k in range(31):  # a vehicle driving 0.5 m a tick, straight ahead of a parked ego
        obs = r(Scene(ego=ego, vehicles=np.array([box(10.0 + 0.5 * k, 0.0, 0.0)])))
    rows = {t: centroid(channel(r, obs, f"vehicles@{t:g}s"))[0] for t in SPEC.history}
    ahead_px = {t: 192 - 40 - rows[t] for t in SPEC.history}
    # -0.1 s is the newest frame (k=30 -> 25 m); -1.6 s is 30 ticks earlier (k=0 -> 10 m).
    assert ahead_px[-0.1] == pytest.approx(25 * 5, abs=1)
    assert ahead_px[-0.6] == pytest.approx(20 * 5, abs=1)
    assert ahead_px[-1.6] == pytest.approx(10 * 5, abs=1)


def test_ego_history_shows_the_egos_own_trail_so_its_speed_is_observable(town):
    """With ego_history the vehicles history channels carry the ego's past boxes: at 4 m/s its box
    0.5 s ago sits 2 m (10 px) behind the ego; without it a lone ego leaves them empty."""

    for ego_history in (True, False):
        r = BirdviewRenderer(
            town.lanes, SPEC.model_copy(update={"ego_history": ego_history}), delta_seconds=0.05
        )
        for k in range(31):  # driving 0.2 m a tick (4 m/s) along x, nobody else around
            obs = r(Scene(ego=box(0.2 * k, 0.0, 0.0), vehicles=np.zeros((0, 5))))
        if not ego_history:
            assert not any(channel(r, obs, f"vehicles@{t:g}s").any() for t in SPEC.history)
            continue
        behind_px = {
            t: centroid(channel(r, obs, f"vehicles@{t:g}s"))[0] - (192 - 40) for t in (-0.1, -0.6, -1.1)
        }
        assert behind_px[-0.1] == pytest.approx(0, abs=1)  # the newest frame is now
        assert behind_px[-0.6] == pytest.approx(2.0 * 5, abs=1)
        assert behind_px[-1.1] == pytest.approx(4.0 * 5, abs=1)


def test_speed_channel_is_a_bar_as_wide_as_the_egos_speed(town):
    """The ego's speed, which no other channel shows, as a bar from the left edge: 5 m/s of the
    20 m/s range is a quarter of the width, at any heading; at or above the range, the full width."""
    spec = BirdviewSpec(channels=("road", "speed"), speed_range=20.0)
    r = BirdviewRenderer(town.lanes, spec)
    for speed, width in ((0.0, 0), (5.0, 48), (10.0, 96), (35.0, 192)):
        bar = channel(
            r, r.render(Scene(ego=box(3.0, 1.0, 2.0), vehicles=np.zeros((0, 5)), ego_speed=speed)), "speed"
        )
        assert bar[:, :width].all() and not bar[:, width:].any()


def test_pack_unpack_round_trip_is_exact_numpy_and_torch():
    rng = np.random.default_rng(0)
    for channels in (24, 25, 7, 1):
        obs = (rng.random((channels, 192, 192)) < 0.3).astype(np.uint8)
        packed = pack(obs)
        assert np.array_equal(packed, np.packbits(obs.astype(bool), axis=0))
        assert packed.shape == (-(-channels // 8), 192, 192)
        assert np.array_equal(unpack(packed, channels), obs)
        batch = torch.from_numpy(np.stack([packed, pack(1 - obs)]))
        out = UnpackBits(channels)(batch)
        assert out.dtype == torch.float32 and out.shape == (2, channels, 192, 192)
        assert torch.equal(out[0], torch.from_numpy(obs).float())
        assert torch.equal(out[1], torch.from_numpy(1 - obs).float())


def test_same_pixels_from_the_carla_api_and_from_the_embedded_arrays():
    town = load_town("GridTown01")
    world = EmbeddedWorld(town, seed=0)
    hero = world.spawn_actor(
        world.get_blueprint_library().find("vehicle.tesla.model3"), town.spawn_points(seed=1)[0]
    )
    world.spawn_traffic(50)
    spec = BirdviewSpec(channels=(*BirdviewSpec().channels, "speed"))
    via_api, via_arrays = BirdviewRenderer(town.lanes, spec), BirdviewRenderer(town.lanes, spec)
    driver = LaneFollower(town.lanes, seed=0)
    seen = set()
    for _ in range(300):
        hero.apply_control(driver.run_step(hero))
        world.tick()
        a = via_api(scene_from_world(world, hero, town.lanes))
        b = via_arrays(world.birdview_scene(hero))
        assert np.array_equal(a, b)
        seen.update(name.split("@")[0] for name, k in via_api.index.items() if a[k].any())
    assert {"road", "vehicles", "lane_solid", "speed"} <= seen and seen & {"lights_red", "lights_green"}


def test_route_channel_follows_the_planned_route(town):
    g = town.lanes
    starts = np.flatnonzero(~g.is_junction & (g.lane_length > 40))
    route = plan_route(g, (int(starts[0]), 5.0), (int(starts[-1]), 10.0))
    assert route.length > 50 and route.sequence[0] == starts[0] and route.sequence[-1] == starts[-1]
    for a, b in zip(route.sequence, route.sequence[1:], strict=False):
        assert b in g.successors(a) or b in (g.lane_left[a], g.lane_right[a])
    r = BirdviewRenderer(g, SPEC)
    r.set_route(route.points)
    obs = r.render(Scene(ego=ego_on_lane(g, int(starts[0]), 5.0), vehicles=np.zeros((0, 5))))
    route_px = channel(r, obs, "route")
    assert route_px[192 - 40 - 20, 96]  # 4 m straight ahead is on the route
    assert route.progress(route.points[10]) == pytest.approx(route.distance[10])
    # 25 m on along the first lane, the passed part is no longer drawn: 6 m behind is blank.
    obs = r.render(Scene(ego=ego_on_lane(g, int(starts[0]), 30.0), vehicles=np.zeros((0, 5))))
    route_px = channel(r, obs, "route")
    assert route_px[192 - 40 - 20, 96] and not route_px[192 - 40 + 30, 96]


def test_preview_cli_writes_a_hero_frame_and_a_map(tmp_path):
    import subprocess
    import sys

    import cv2

    out = tmp_path / "bev.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carla_env.preview",
            "--town",
            "GridTown03",
            "--out",
            str(out),
            "--seconds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    frame = cv2.imread(str(out))
    assert frame.shape == (384, 384, 3) and frame.any()
    whole = cv2.imread(str(tmp_path / "bev_map.png"))
    assert whole.shape[0] > 384 and (whole == [70, 70, 70]).all(axis=-1).any()  # road drawn
    bad = subprocess.run(
        [sys.executable, "-m", "carla_env.preview", "--town", "NoSuchTown"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown town 'NoSuchTown'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--walkers", "-1"], "--walkers -1"),
        (["--walkers", "5000"], "--walkers 5000"),
        (["--vehicles", "-3"], "--vehicles -3"),
        (["--seconds", "-1"], "--seconds -1"),
    ],
)
def test_preview_refuses_counts_the_config_would_refuse_and_writes_nothing(tmp_path, capsys, flags, named):
    from carla_env import preview

    out = tmp_path / "bev.png"
    assert preview.main(["--town", "GridTown03", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(named) and len(err.splitlines()) == 1
    assert not out.exists()


def test_preview_with_zero_seconds_writes_the_frame_at_spawn(tmp_path):
    from carla_env import preview

    out = tmp_path / "bev.png"
    assert preview.main(["--town", "GridTown03", "--out", str(out), "--seconds", "0", "--walkers", "0"]) == 0
    assert out.exists()


def test_renderers_of_one_town_share_a_read_only_raster(town):
    a, b = BirdviewRenderer(town.lanes), BirdviewRenderer(town.lanes)
    assert a.raster is b.raster
    assert not a.raster.image.flags.writeable
    assert BirdviewRenderer(town.lanes, BirdviewSpec(pixels_per_meter=2.0)).raster is not a.raster


def test_boxes_that_overlap_are_drawn_whole(town, renderer):
    """OpenCV fills the polygons of one call even-odd; a group of walkers, or two cars in a crash, must
    not cancel each other out where they overlap."""
    ego = box(100.0, 50.0, 0.0)
    walkers = np.array([[110.0, 50.0, 0.0, 0.6, 0.6], [110.5, 50.3, 0.3, 0.6, 0.6]])
    cars = np.array([box(115.0, 48.0, 0.0), box(116.0, 48.5, 0.2)])
    obs = renderer.render(Scene(ego=ego, vehicles=cars, walkers=walkers))
    for name, boxes in (("walkers@-0.1s", walkers), ("vehicles@-0.1s", cars)):
        alone = [
            channel(renderer, renderer.render(Scene(ego=ego, vehicles=b[None], walkers=b[None])), name)
            for b in boxes
        ]
        np.testing.assert_array_equal(channel(renderer, obs, name), alone[0] | alone[1])


def test_light_states_of_any_numeric_type_draw_alike(town, renderer):
    g = town.lanes
    lane = int(np.flatnonzero(g.lane_light >= 0)[0])
    ego = ego_on_lane(g, lane, g.lane_length[lane] - 10.0)
    red = np.zeros(len(g.light_id), np.int64)  # 0: red
    expected = renderer.render(Scene(ego=ego, vehicles=np.zeros((0, 5)), light_states=red))
    for states in (red.astype(float), red.astype(np.int32), red.astype(np.uint8)):
        obs = renderer.render(Scene(ego=ego, vehicles=np.zeros((0, 5)), light_states=states))
        np.testing.assert_array_equal(obs, expected)


def test_a_stop_line_across_a_zoomed_in_view_is_drawn(town):
    """At 50 px/m a 16 px view is 0.3 m across: a stop line through it has both ends far off screen."""
    g = town.lanes
    r = BirdviewRenderer(
        g,
        BirdviewSpec(size=16, pixels_per_meter=50.0, ego_offset=8, channels=("lights_red",), history=(-0.1,)),
    )
    lane = int(np.flatnonzero(g.lane_light >= 0)[0])
    ego = ego_on_lane(g, lane, g.lane_length[lane])  # on the stop line, heading along the lane
    obs = r.render(
        Scene(ego=ego, vehicles=np.zeros((0, 5)), light_states=np.zeros(len(g.light_id), np.int64))
    )
    assert obs[0].sum() > 16  # a band across the whole view, not nothing


@pytest.mark.parametrize("env_threads, expected", [(None, 1), ("3", 3)])
def test_a_renderer_turns_opencvs_thread_pool_off_unless_the_user_set_it(env_threads, expected):
    # The pool's workers spin after each call: 15 of them a runner at ~27% of a core on a 16-CPU machine.
    # OpenCV's thread count is process-wide, so each case runs in its own interpreter.
    import os
    import subprocess
    import sys

    code = (
        "import os, cv2\n"
        "if 'OPENCV_FOR_THREADS_NUM' not in os.environ: cv2.setNumThreads(4)\n"
        "from carla_env.maps import load_town\n"
        "from carla_env.sensors import BirdviewRenderer\n"
        "BirdviewRenderer(load_town('GridTown03').lanes)\n"
        "print(cv2.getNumThreads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FOR_THREADS_NUM"}
    if env_threads is not None:
        env["OPENCV_FOR_THREADS_NUM"] = env_threads
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == expected
