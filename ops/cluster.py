"""`make cluster-up/-down/-status`: the storage stack (kept), the cluster stack, a cost estimate before
apply, and waiting until the Ray head reports ready (through SSM, no open port)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ops.tools import ROOT, OpsError, run, terraform_outputs

STORAGE = ROOT / "terraform" / "storage"
CLUSTER = ROOT / "terraform" / "cluster"
# On-demand Linux prices, us-west-2, USD/hour (list prices, 2026); spot is typically 30-70% of these.
HOURLY = {
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.4xlarge": 1.624, "g6.2xlarge": 0.978,
    "g4dn.2xlarge": 0.752, "g4dn.xlarge": 0.526,
}  # fmt: skip
SPOT_FRACTION = 0.4
ENDPOINTS_HOURLY = 0.01  # per interface endpoint per AZ


def cost_estimate(cluster_vars: dict) -> dict:
    """USD/hour of a cluster: head on demand, workers at a typical spot discount, VPC endpoints."""
    head = HOURLY.get(cluster_vars.get("head_instance_type", "g5.2xlarge"))
    types = cluster_vars.get("worker_instance_types", ["g5.2xlarge"])
    known = [HOURLY[t] for t in types if t in HOURLY]
    if head is None or not known:
        raise OpsError(
            f"no price for {cluster_vars.get('head_instance_type')} / {types}; add it to ops/cluster.py HOURLY"
        )
    workers = cluster_vars.get("worker_desired", 2) * min(known) * SPOT_FRACTION
    worst = cluster_vars.get("worker_max", 8) * max(known)
    endpoints = 3 * cluster_vars.get("az_count", 2) * ENDPOINTS_HOURLY
    return {
        "head_per_hour": round(head, 3),
        "workers_per_hour_spot": round(workers, 3),
        "endpoints_per_hour": round(endpoints, 3),
        "total_per_hour": round(head + workers + endpoints, 2),
        "worst_case_per_hour_on_demand_at_max": round(head + worst + endpoints, 2),
    }


def _tfvars_args(values: dict) -> list[str]:
    return [
        a
        for k, v in values.items()
        for a in ("-var", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
    ]


def up(region: str, project: str, cluster_vars: dict, yes: bool, confirm=input) -> dict:
    if not (CLUSTER / "ami.auto.tfvars.json").is_file():
        raise OpsError(f"no AMI recorded in {CLUSTER / 'ami.auto.tfvars.json'}; run `make ami` first")
    base = {"region": region, "project": project}
    run(["terraform", f"-chdir={STORAGE}", "init", "-input=false"])
    run(["terraform", f"-chdir={STORAGE}", "apply", "-input=false", "-auto-approve", *_tfvars_args(base)])
    storage = terraform_outputs(STORAGE)
    values = {
        **base,
        **cluster_vars,
        "bucket_name": storage["bucket_name"],
        "bucket_kms_key_arn": storage["kms_key_arn"],
    }
    estimate = cost_estimate(values)
    print("estimated cost (USD/hour): " + ", ".join(f"{k} {v}" for k, v in estimate.items()), flush=True)
    if not yes and confirm("apply the cluster? [y/N] ").strip().lower() not in ("y", "yes"):
        raise OpsError("cluster-up cancelled; nothing was created beyond the results bucket")
    run(["terraform", f"-chdir={CLUSTER}", "init", "-input=false"])
    run(["terraform", f"-chdir={CLUSTER}", "apply", "-input=false", "-auto-approve", *_tfvars_args(values)])
    return terraform_outputs(CLUSTER)


def down(region: str, project: str) -> None:
    """Destroys the cluster stack only: the results bucket (its own state) stays with every checkpoint."""
    storage = terraform_outputs(STORAGE)
    values = {"region": region, "project": project, "bucket_name": storage["bucket_name"],
              "bucket_kms_key_arn": storage["kms_key_arn"], "ami_id": _recorded_ami()}  # fmt: skip
    run(["terraform", f"-chdir={CLUSTER}", "destroy", "-input=false", "-auto-approve", *_tfvars_args(values)])


def _recorded_ami() -> str:
    path = CLUSTER / "ami.auto.tfvars.json"
    return json.loads(path.read_text())["ami_id"] if path.is_file() else "ami-00000000"


def wait_for_head(ssm, instance_id: str, timeout: float = 900.0, poll: float = 10.0) -> str:
    """Run `ray status` on the head through SSM until it succeeds; returns its output."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            cmd = ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName="AWS-RunShellScript",
                Parameters={
                    "commands": [
                        "sudo -u ubuntu bash -c 'set -a; . /etc/ray/env; /opt/carla-rl/.venv/bin/ray status'"
                    ]
                },
            )["Command"]["CommandId"]
            time.sleep(poll)
            out = ssm.get_command_invocation(CommandId=cmd, InstanceId=instance_id)
            if out["Status"] == "Success":
                return out["StandardOutputContent"]
            last = out.get("StandardErrorContent") or out["Status"]
        except Exception as e:  # the SSM agent is not registered yet
            last = f"{type(e).__name__}: {e}"
            time.sleep(poll)
    raise OpsError(f"Ray head {instance_id} not ready after {timeout:.0f} s ({last.strip()[:200]})")


def status(session, outputs: dict) -> dict:
    asg = session.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["worker_asg_name"]]
    )["AutoScalingGroups"]
    workers = [i["LifecycleState"] for g in asg for i in g["Instances"]]
    ray = wait_for_head(session.client("ssm"), outputs["head_instance_id"], timeout=60)
    return {"head": outputs["head_instance_id"], "workers": workers, "ray_status": ray}


def ensure_ready_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
