"""`make ami`: pack the repo, build the CARLA AMI with Packer, record its id where Terraform reads it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from ops.tools import ROOT, OpsError, require, run

PACKER_DIR = ROOT / "packer"
TFVARS = ROOT / "terraform" / "cluster" / "ami.auto.tfvars.json"
CHECKSUMS = PACKER_DIR / "carla.sha256"


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


def carla_checksums(carla_version: str, path: Path = CHECKSUMS) -> dict[str, str]:
    """The SHA-256 of the CARLA release and AdditionalMaps tarballs, from `sha256sum` lines in
    packer/carla.sha256 (CARLA publishes none: record them once from a download you trust)."""
    names = {"carla_sha256": f"CARLA_{carla_version}.tar.gz",
             "additional_maps_sha256": f"AdditionalMaps_{carla_version}.tar.gz"}  # fmt: skip
    lines = path.read_text().splitlines() if path.is_file() else []
    known = {}
    for line in lines:
        m = re.fullmatch(r"([0-9a-f]{64}) [ *]?(\S+)", line.strip())
        if m:
            known[m.group(2)] = m.group(1)
    missing = [n for n in names.values() if n not in known]
    if missing:
        raise OpsError(
            f"no SHA-256 for {missing[0]} in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
            f"download it once from a source you trust and append `sha256sum {missing[0]}`'s line there"
        )
    return {var: known[name] for var, name in names.items()}


def build(region: str, carla_version: str) -> str:
    require("packer")  # before any work: a missing CLI is the first thing to say
    checksums = carla_checksums(carla_version)
    pack_source()
    run(["packer", "init", "."], cwd=PACKER_DIR)
    variables = {"region": region, "carla_version": carla_version, **checksums}
    run(
        ["packer", "build", *(a for k, v in variables.items() for a in ("-var", f"{k}={v}")), "."],
        cwd=PACKER_DIR,
    )
    ami_id = ami_from_manifest(PACKER_DIR / "manifest.json")
    record_ami(ami_id)
    return ami_id
