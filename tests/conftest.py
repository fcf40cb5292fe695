from pathlib import Path

import pytest

SHARED_MAPS = Path(__file__).resolve().parents[2] / "shared" / "maps"
REAL_TOWNS = ["Town01", "Town02", "Town04", "Town10HD"]
# Overrides that make an experiment config runner-sized: the embedded backend with 3 vehicles, a small
# packed BEV beside the event sensors, a tiny CNN, 3 envs a runner (tests add towns, steps, runners).
SMALL_RUNNER = {
    "simulator": {"backend": "embedded", "traffic": {"vehicles": 3}},
    "experiment": {
        "sensors": {
            "birdview": {"type": "sensor.birdview", "packed": True, "size": 48, "pixels_per_meter": 2.0},
            "collision": {"type": "sensor.other.collision"},
            "lane_invasion": {"type": "sensor.other.lane_invasion"},
        },
    },
    "training": {
        "envs_per_runner": 3,
        "model": {"conv_filters": [[8, [4, 4], 4], [16, [3, 3], 2]], "head_fcnet_hiddens": [32]},
    },
}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Lane-graph cache in a temp dir: tests never read a stale user cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CARLA_ENV_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("CARLA_ROOT", raising=False)
    yield
    mp.undo()


def real_town_path(name: str) -> str:
    path = SHARED_MAPS / f"{name}.xodr"
    if not path.is_file():
        pytest.skip(f"{path} absent: the real CARLA towns live in ../shared/maps beside the repo")
    return str(path)


@pytest.fixture(params=REAL_TOWNS)
def real_town(request) -> str:
    return real_town_path(request.param)
