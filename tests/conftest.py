from pathlib import Path

import pytest

SHARED_MAPS = Path(__file__).resolve().parents[2] / "shared" / "maps"
REAL_TOWNS = ["Town01", "Town02", "Town04", "Town10HD"]


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
