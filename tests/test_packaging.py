"""One dependency list, three installs: the env core, training, the cluster CLI (no simulator stack)."""

import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

from ops.requirements import extra_requirements

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR_STACK = ("carla", "torch", "numba", "gymnasium", "opencv", "ray[rllib")


def names(reqs):
    return [r.split(";")[0].strip().lower() for r in reqs]


def test_the_cloud_extra_holds_no_simulator_stack():
    cloud = names(extra_requirements("cloud"))
    assert any(r.startswith("boto3") for r in cloud) and any(r.startswith("ray[default]") for r in cloud)
    assert not [r for r in cloud if r.startswith(SIMULATOR_STACK)]


def test_the_env_core_needs_neither_ray_nor_torch_nor_aws():
    core = names(r for r in requires("carla-env") if "extra ==" not in r)
    assert any(r.startswith("carla==0.9.16") for r in core)
    assert not [r for r in core if r.startswith(("ray", "torch", "boto3"))]
    assert "torch==2.13.0" in names(extra_requirements("train"))  # exact: a range pulls a CUDA build


def test_the_cluster_cli_runs_with_the_simulator_stack_absent():
    blocked = ("carla", "torch", "numba", "gymnasium", "cv2", "carla_env")
    code = (
        "import sys, runpy\n"
        f"for m in {blocked!r}: sys.modules[m] = None  # importing any of them now fails\n"
        "sys.argv = ['ops', '--help']\n"
        "runpy.run_module('ops', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_requirements_cli_names_a_missing_extra():
    proc = subprocess.run(
        [sys.executable, "-m", "ops.requirements", "gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "no extra 'gpu' in carla-env's metadata; see [project.optional-dependencies]"
    )
