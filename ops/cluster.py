"""`make cluster-up/-down/-status`: checks and a cost estimate before anything is created, then the
storage stack (kept) and the cluster stack, and waiting until the Ray head reports ready (through
SSM, no open port)."""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timezone

from ops.tools import INSTALL, ROOT, OpsError, require, run, terraform_outputs

STORAGE = ROOT / "terraform" / "storage"
CLUSTER = ROOT / "terraform" / "cluster"
# What the commands after `up` read from the cluster stack; none of them works without all of it.
CLUSTER_OUTPUTS = ("head_instance_id", "head_private_ip", "dashboard_port", "ray_token_parameter",
                   "worker_asg_name", "bucket_name")  # fmt: skip
STORAGE_OUTPUTS = ("bucket_name", "kms_key_arn", "flow_log_group_arn")
# terraform/cluster/variables.tf defaults, for the estimate and the checks before any apply.
DEFAULTS = {
    "head_instance_type": "g5.2xlarge",
    "worker_instance_types": ["g5.2xlarge", "g5.4xlarge", "g6.2xlarge", "g4dn.2xlarge"],
    "worker_desired": 2,
    "worker_max": 8,
    "az_count": 2,
}
INTERFACE_ENDPOINTS = 3  # ssm, ssmmessages, ec2messages (terraform/cluster/network.tf)
ENDPOINT_HOURLY = 0.01  # per interface endpoint per AZ: the list price in most regions
# EC2 vCPU quotas by instance family: (on-demand, spot) quota codes of service "ec2".
GPU_QUOTAS = {
    "g": ("L-DB2E81BA", "L-3819A6DF"),  # Running On-Demand / All Spot: G and VT instances
    "vt": ("L-DB2E81BA", "L-3819A6DF"),
    "p": ("L-417A185B", "L-7212CCBC"),  # P instances
}


def _family(instance_type: str) -> str:
    return re.match(r"[a-z]+?(?=\d)", instance_type).group()


def on_demand_price(pricing, region: str, instance_type: str) -> float:
    """USD/hour, Linux, shared tenancy, from the AWS Price List API."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}  # fmt: skip
    products = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
    )["PriceList"]
    for product in map(json.loads, products):
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term["priceDimensions"].values():
                price = float(dimension["pricePerUnit"]["USD"])
                if price > 0:
                    return price
    raise OpsError(f"no on-demand Linux price for {instance_type} in {region}: is it offered there?")


def spot_price(ec2, instance_type: str) -> float | None:
    """Today's lowest spot price of the type over the region's zones, USD/hour (None: not offered)."""
    history = ec2.describe_spot_price_history(
        InstanceTypes=[instance_type],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=datetime.now(timezone.utc),
    )["SpotPriceHistory"]
    return min((float(h["SpotPrice"]) for h in history), default=None)


def cost_estimate(session, region: str, values: dict) -> dict:
    """USD/hour of the configured cluster in its region: the head on demand, the desired workers at
    today's spot price of the cheapest configured type, the SSM endpoints; and the worst case
    (every worker at max, on demand, on the dearest type)."""
    values = {**DEFAULTS, **values}
    pricing = session.client("pricing", region_name="us-east-1")  # the Price List API's endpoint
    ec2 = session.client("ec2", region_name=region)
    types = values["worker_instance_types"]
    priced = {
        t: on_demand_price(pricing, region, t) for t in dict.fromkeys([values["head_instance_type"], *types])
    }
    head, on_demand = priced[values["head_instance_type"]], {t: priced[t] for t in types}
    spot = {t: p for t in types if (p := spot_price(ec2, t)) is not None}
    if not spot:
        raise OpsError(f"none of worker_instance_types {types} is offered as spot in {region}")
    endpoints = INTERFACE_ENDPOINTS * values["az_count"] * ENDPOINT_HOURLY
    workers = values["worker_desired"] * min(spot.values())
    return {
        "region": region,
        "head_per_hour": round(head, 3),
        "workers_per_hour_spot": round(workers, 3),
        "endpoints_per_hour": round(endpoints, 3),
        "total_per_hour": round(head + workers + endpoints, 2),
        "worst_case_per_hour_on_demand_at_max": round(
            head + values["worker_max"] * max(on_demand.values()) + endpoints, 2
        ),
    }


def check_gpu_quota(session, region: str, values: dict) -> None:
    """The account's vCPU quotas must fit the head (on demand) and the desired workers (spot, at the
    largest configured type): new accounts often have 0 for GPU families."""
    values = {**DEFAULTS, **values}
    ec2 = session.client("ec2", region_name=region)
    quotas = session.client("service-quotas", region_name=region)
    types = [values["head_instance_type"], *values["worker_instance_types"]]
    info = ec2.describe_instance_types(InstanceTypes=sorted(set(types)))["InstanceTypes"]
    vcpus = {i["InstanceType"]: i["VCpuInfo"]["DefaultVCpus"] for i in info}
    needs: dict[str, int] = {}
    head_family = _family(values["head_instance_type"])
    if head_family in GPU_QUOTAS:
        code = GPU_QUOTAS[head_family][0]
        needs[code] = needs.get(code, 0) + vcpus[values["head_instance_type"]]
    for t in values["worker_instance_types"]:
        if _family(t) in GPU_QUOTAS:
            code = GPU_QUOTAS[_family(t)][1]
            needs[code] = max(needs.get(code, 0), values["worker_desired"] * vcpus[t])
    for code, need in needs.items():
        try:
            quota = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
        except quotas.exceptions.NoSuchResourceException:  # never changed: the default applies
            quota = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
        if quota["Value"] < need:
            raise OpsError(
                f"EC2 quota {quota.get('QuotaName', code)!r} ({code}) in {region} is {quota['Value']:.0f} vCPUs, "
                f"the cluster needs {need}: aws service-quotas request-service-quota-increase --region {region} "
                f"--service-code ec2 --quota-code {code} --desired-value {need}"
            )


def plan_summary(region: str, project: str, values: dict) -> list[str]:
    values = {**DEFAULTS, **values}
    return [
        f"storage (kept by cluster-down): S3 bucket {project}-results-<account>-{region}, its KMS key, "
        f"the VPC flow-log group /{project}/vpc-flow-logs (365 days) and its KMS key",
        f"cluster: VPC with {values['az_count']} private subnets, no internet gateway or NAT; S3 gateway "
        f"endpoint and {INTERFACE_ENDPOINTS * values['az_count']} SSM interface endpoints; private DNS "
        f"zone {project}.internal",
        f"  head: 1 x {values['head_instance_type']} on demand",
        f"  workers: {values['worker_desired']} (max {values['worker_max']}) spot of "
        + ", ".join(values["worker_instance_types"]),
    ]


def preflight(session, region: str, project: str, values: dict) -> dict:
    """Everything `up` checks before it creates anything: CLIs, the AMI, quotas, the price."""
    if not (CLUSTER / "ami.auto.tfvars.json").is_file():
        raise OpsError(f"no AMI recorded in {CLUSTER / 'ami.auto.tfvars.json'}; run `make ami` first")
    for tool in ("terraform", "session-manager-plugin"):
        if shutil.which(tool) is None:
            raise OpsError(f"{tool} not found on PATH; {INSTALL[tool]}")
    check_gpu_quota(session, region, values)
    return cost_estimate(session, region, values)


def _tfvars_args(values: dict) -> list[str]:
    return [
        a
        for k, v in values.items()
        for a in ("-var", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
    ]


def up(session, region: str, project: str, cluster_vars: dict, yes: bool, confirm=input) -> dict:
    estimate = preflight(session, region, project, cluster_vars)
    print("\n".join(["will create:", *plan_summary(region, project, cluster_vars)]))
    print("estimated cost (USD/hour): " + ", ".join(f"{k} {v}" for k, v in estimate.items()), flush=True)
    if not yes and confirm("apply? [y/N] ").strip().lower() not in ("y", "yes"):
        raise OpsError("cluster-up cancelled; nothing was created")
    base = {"region": region, "project": project}
    run(["terraform", f"-chdir={STORAGE}", "init", "-input=false"])
    run(["terraform", f"-chdir={STORAGE}", "apply", "-input=false", "-auto-approve", *_tfvars_args(base)])
    values = {**base, **cluster_vars, **_storage_vars()}
    run(["terraform", f"-chdir={CLUSTER}", "init", "-input=false"])
    run(["terraform", f"-chdir={CLUSTER}", "apply", "-input=false", "-auto-approve", *_tfvars_args(values)])
    return terraform_outputs(CLUSTER, CLUSTER_OUTPUTS)


def _storage_vars() -> dict:
    storage = terraform_outputs(STORAGE, STORAGE_OUTPUTS)
    return {"bucket_name": storage["bucket_name"], "bucket_kms_key_arn": storage["kms_key_arn"],
            "flow_log_group_arn": storage["flow_log_group_arn"]}  # fmt: skip


def down(region: str, project: str) -> None:
    """Destroys the cluster stack only: the results bucket and the flow logs (their own state) stay."""
    # Resources, not outputs: a half-failed apply may lack outputs yet hold billable resources.
    require("terraform")
    try:
        resources = run(["terraform", f"-chdir={CLUSTER}", "state", "list"], capture=True).split()
    except OpsError:  # "No state file was found!"
        resources = []
    if not resources:
        raise OpsError("no Terraform state for terraform/cluster: run `make cluster-up` first")
    values = {"region": region, "project": project, **_storage_vars(), "ami_id": _recorded_ami()}
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
