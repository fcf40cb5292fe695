"""`make ami`: pack the repo, build the CARLA AMI with Packer, record its id where Terraform reads it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ops.tools import ROOT, OpsError, require, run

PACKER_DIR = ROOT / "packer"
TFVARS = ROOT / "terraform" / "cluster" / "ami.auto.tfvars.json"


def ami_from_manifest(manifest: Path) -> str:
    """The AMI of the manifest's last run ('region:ami-...' artifact ids)."""
    if not manifest.is_file():
        raise OpsError(f"no Packer manifest at {manifest}; did the build finish?")
    data = json.loads(manifest.read_text())
    last = data.get("last_run_uuid")
    builds = [b for b in data.get("builds", []) if b.get("packer_run_uuid") == last] or data.get("builds", [])
    if not builds:
        raise OpsError(f"{manifest} lists no builds")
    artifact = builds[-1]["artifact_id"]
    return artifact.split(",")[0].split(":")[-1]


def record_ami(ami_id: str, path: Path = TFVARS) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ami_id": ami_id}, indent=2) + "\n")
    tmp.replace(path)


def pack_source(out: Path = ROOT / "dist" / "carla_rl_src.tar.gz") -> Path:
    """The committed tree (git archive): what the AMI installs, without runs, venvs or caches."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["git", "archive", "--format=tar.gz", "-o", str(out), "HEAD"], cwd=ROOT)
    except FileNotFoundError:
        proc = None
    if proc is None or proc.returncode != 0:
        raise OpsError("git archive failed: `make ami` packs the committed tree of a git checkout")
    return out


def build(region: str, carla_version: str) -> str:
    require("packer")  # before any work: a missing CLI is the first thing to say
    pack_source()
    run(["packer", "init", "."], cwd=PACKER_DIR)
    run(
        ["packer", "build", "-var", f"region={region}", "-var", f"carla_version={carla_version}", "."],
        cwd=PACKER_DIR,
    )
    ami_id = ami_from_manifest(PACKER_DIR / "manifest.json")
    record_ami(ami_id)
    return ami_id


def find_ami(ec2, project: str, carla_version: str) -> str | None:
    """Newest of our AMIs (by tags) in this account and region, or None."""
    images = ec2.describe_images(
        Owners=["self"],
        Filters=[
            {"Name": "tag:Project", "Values": [project]},
            {"Name": "tag:CarlaVersion", "Values": [carla_version]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    return max(images, key=lambda i: i["CreationDate"])["ImageId"] if images else None
