"""Infra, offline: Terraform and Packer parsed (python-hcl2) and checked property by property, the
CLIs' own checks where installed (terraform validate with a local provider mirror, console for
validations and the shared key policy), the provisioning scripts run against local stand-ins, and
the node user_data rendered by real Terraform and run on this machine's private IP to form a
token-auth two-node Ray cluster reached through ops' own client and SSM port forward. No AWS
account is used; ops' own tests are in tests/test_ops.py."""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[1]
TF = ROOT / "terraform"
PACKER = ROOT / "packer"
RAY_PORTS = {6379, 8265, 10001}
needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer CLI not installed")


# ------------------------------------------------------------------------------------------- parse
def _clean(value):
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_dir(folder: Path) -> dict:
    """{'resource': {type: {name: body}}, 'locals': {...}, 'variable': {...}, ...} over a folder's .tf files."""
    out: dict = {"resource": {}, "data": {}, "locals": {}, "variable": {}, "output": {}, "module": {}}
    for path in sorted(folder.glob("*.tf")):
        doc = _clean(hcl2.load(path.open()))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                out["resource"].setdefault(rtype, {}).update(named)
        for block in doc.get("data", []):
            for rtype, named in block.items():
                out["data"].setdefault(rtype, {}).update(named)
        for block in doc.get("locals", []):
            out["locals"].update(block)
        for key in ("variable", "output", "module"):
            for block in doc.get(key, []):
                out[key].update(block)
    return out


def resolve(value, local: dict):
    """Substitute whole-value references to locals ('${local.a.b}')."""
    m = re.fullmatch(r"\$\{local\.([\w.]+)\}", value) if isinstance(value, str) else None
    if not m:
        return value
    for part in m.group(1).split("."):
        local = local[part]
    return local


@pytest.fixture(scope="module")
def cluster():
    return parse_dir(TF / "cluster")


@pytest.fixture(scope="module")
def storage():
    return parse_dir(TF / "storage")


# ------------------------------------------------------------------------------- terraform: network
def test_no_public_path_into_the_vpc(cluster):
    res = cluster["resource"]
    for forbidden in ("aws_internet_gateway", "aws_nat_gateway", "aws_eip", "aws_lb"):
        assert forbidden not in res, f"{forbidden}: the cluster has no public entry"
    assert all(s["map_public_ip_on_launch"] is False for s in res["aws_subnet"].values())
    assert "associate_public_ip_address" not in json.dumps(res)
    assert set(res["aws_vpc_endpoint"]) == {"s3", "interface"}  # SSM and S3 without the internet


def test_security_groups_allow_only_intra_cluster_ingress(cluster):
    res = cluster["resource"]
    for sg in res["aws_security_group"].values():
        assert "ingress" not in sg and "egress" not in sg, "rules live in their own resources"
    ingress = res["aws_vpc_security_group_ingress_rule"]
    assert ingress, "some ingress must exist between nodes"
    for name, rule in ingress.items():
        assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule and "prefix_list_id" not in rule, name
        assert rule["referenced_security_group_id"].startswith("${aws_security_group."), name
    assert "aws_security_group_rule" not in res
    for name, rule in res["aws_vpc_security_group_egress_rule"].items():
        assert rule.get("cidr_ipv4") != "0.0.0.0/0" and rule.get("cidr_ipv6") != "::/0", name


def test_ray_ports_are_never_open_to_the_world():
    """What checkov does not flag: 6379 (GCS), 8265 (dashboard / Jobs API: runs code), 10001 (client)."""
    offenders = []
    for path in TF.rglob("*.tf"):
        doc = _clean(hcl2.load(path.open()))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    rules = [body] if "rule" in rtype else body.get("ingress", [])
                    for rule in rules:
                        cidrs = {rule.get("cidr_ipv4"), rule.get("cidr_ipv6"), *rule.get("cidr_blocks", [])}
                        lo, hi = int(rule.get("from_port", 0)), int(rule.get("to_port", 65535))
                        world = cidrs & {"0.0.0.0/0", "::/0"}
                        if world and (
                            rule.get("ip_protocol") == "-1" or any(lo <= p <= hi for p in RAY_PORTS)
                        ):
                            offenders.append(f"{path.name}:{rtype}.{name}")
    assert offenders == []


def test_nodes_require_imdsv2_and_encrypted_volumes(cluster):
    res, local = cluster["resource"], cluster["locals"]
    head = res["aws_instance"]["head"]
    template = res["aws_launch_template"]["worker"]
    for meta in (head["metadata_options"][0], template["metadata_options"][0]):
        assert resolve(meta["http_tokens"], local) == "required"
        assert resolve(meta["http_put_response_hop_limit"], local) == 1
    assert head["root_block_device"][0]["encrypted"] is True
    assert template["block_device_mappings"][0]["ebs"][0]["encrypted"] is True
    assert "subnet_id" in head and "private" in head["subnet_id"]


def test_dashboard_binds_the_private_address_with_token_auth():
    head = (TF / "cluster/templates/head.sh.tftpl").read_text()
    node = (PACKER / "files/ray-node.sh").read_text()
    assert (
        "RAY_AUTH_MODE=token" in head
        and "RAY_AUTH_MODE=token" in (TF / "cluster/templates/worker.sh.tftpl").read_text()
    )
    assert '--dashboard-host="$RAY_NODE_IP"' in node and "0.0.0.0" not in node + head


def test_spot_workers_join_the_head_and_are_bounded(cluster):
    res = cluster["resource"]
    asg = res["aws_autoscaling_group"]["workers"]
    assert asg["capacity_rebalance"] is True
    assert (asg["min_size"], asg["max_size"], asg["desired_capacity"]) == (
        "${var.worker_min}",
        "${var.worker_max}",
        "${var.worker_desired}",
    )
    dist = asg["mixed_instances_policy"][0]["instances_distribution"][0]
    assert dist["on_demand_percentage_above_base_capacity"] == 0 and dist["on_demand_base_capacity"] == 0
    assert "${local.head_dns_name}" in res["aws_launch_template"]["worker"]["user_data"]
    for var in ("worker_min", "worker_max", "worker_desired", "az_count", "vpc_cidr", "ami_id"):
        assert cluster["variable"][var].get("validation"), f"variable {var} needs a validation block"


def _statements(doc: dict) -> list[dict]:
    return doc["statement"]


def test_node_role_is_least_privilege(cluster):
    """No managed policy (AmazonSSMManagedInstanceCore allows ssm:GetParameter(s) on "*": every job,
    which runs arbitrary code, could read every parameter of the account); "*" only for the SSM
    agent's channel actions, which support no resource-level permissions."""
    assert "aws_iam_role_policy_attachment" not in cluster["resource"], "no managed policies on nodes"
    assert "aws_iam_policy_attachment" not in cluster["resource"]
    policy = _statements(cluster["data"]["aws_iam_policy_document"]["node"])
    for statement in policy:
        assert not any(a.endswith(":*") for a in statement["actions"]), statement["sid"]
        if statement["resources"] == ["*"]:
            assert all(a.split(":")[0] in ("ssmmessages", "ec2messages") for a in statement["actions"]), (
                statement
            )
    parameters = [s for s in policy if any(a.startswith("ssm:GetParameter") for a in s["actions"])]
    assert [s["resources"] for s in parameters] == [["${module.ray_token.arn}"]]
    assert all("GetParameters" not in a for s in policy for a in s["actions"])
    s3 = [s for s in policy if any(a.startswith("s3:") for a in s["actions"])]
    assert s3 and all("var.bucket_name" in r for s in s3 for r in s["resources"])
    # What Session Manager and Run Command (ops status, wait_for_head) need from the agent's role.
    actions = {a for s in policy for a in s["actions"]}
    assert {"ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel", "ssmmessages:OpenDataChannel",
            "ec2messages:GetMessages", "ec2messages:SendReply"} <= actions  # fmt: skip


def test_vpc_endpoints_admit_only_the_results_bucket_and_the_bucket_only_the_endpoint(cluster, storage):
    endpoints = cluster["resource"]["aws_vpc_endpoint"]
    assert all("policy" in e for e in endpoints.values()), "every VPC endpoint has a policy"
    s3_policy = cluster["data"]["aws_iam_policy_document"]["s3_endpoint"]["statement"]
    assert endpoints["s3"]["policy"] == "${data.aws_iam_policy_document.s3_endpoint.json}"
    for statement in s3_policy:
        assert statement.get("effect", "Allow") == "Allow"
        assert all(r.startswith("arn:aws:s3:::${var.bucket_name}") for r in statement["resources"]), statement
    for doc in [cluster["data"]["aws_iam_policy_document"]["ssm_endpoint"]]:
        for statement in doc["statement"]:
            assert statement["actions"] == ["${each.key}:*"]
            assert statement["condition"][0]["variable"] == "aws:PrincipalAccount"
    bucket_policy = storage["data"]["aws_iam_policy_document"]["results"]["statement"]
    [outside] = [
        s for s in bucket_policy if any(c["variable"] == "aws:SourceVpce" for c in s.get("condition", []))
    ]
    assert outside["effect"] == "Deny"
    conditions = {c["variable"]: c for c in outside["condition"]}
    assert conditions["aws:SourceVpce"]["test"] == "Null" and conditions["aws:SourceVpce"]["values"] == [
        "true"
    ]
    assert conditions["aws:PrincipalArn"]["values"] == ["${local.node_role_arn}"]
    # The storage stack names the cluster's node role by its name: the two must agree.
    role = cluster["resource"]["aws_iam_role"]["node"]["name"]
    assert storage["locals"]["node_role_arn"].endswith(":role/" + role)
    policy = storage["resource"]["aws_s3_bucket_policy"]["results"]
    assert policy["depends_on"] == ["${aws_s3_bucket_public_access_block.results}"]


def test_every_kms_key_uses_the_one_key_policy(cluster, storage):
    keys = {**cluster["resource"]["aws_kms_key"], **storage["resource"]["aws_kms_key"]}
    modules = {**cluster["module"], **storage["module"]}
    assert set(keys) == {"cluster", "results", "logs"}
    for name, key in keys.items():
        module = re.fullmatch(r"\$\{module\.(\w+)\.json\}", key["policy"]).group(1)
        assert modules[module]["source"] == "../modules/kms-key-policy", name
    for stack in (cluster, storage):
        assert "kms" not in stack["data"].get("aws_iam_policy_document", {}), (
            "no second copy of the key policy"
        )
    assert storage["resource"]["aws_kms_key"]["results"]["lifecycle"][0]["prevent_destroy"] is True


@needs_terraform
def test_key_policy_renders_account_admin_and_logs_only_for_the_named_group(tmp_path):
    """The module through real Terraform (init installs the local module; no provider needed)."""
    group = "arn:aws:logs:eu-central-1:123456789012:log-group:/carla-rl/vpc-flow-logs"
    (tmp_path / "main.tf").write_text(
        f'module "with_logs" {{\n  source = "{TF / "modules/kms-key-policy"}"\n  account_id = "123456789012"\n'
        f'  region = "eu-central-1"\n  log_group_arns = ["{group}"]\n}}\n'
        f'module "plain" {{\n  source = "{TF / "modules/kms-key-policy"}"\n  account_id = "123456789012"\n'
        f'  region = "eu-central-1"\n}}\n'
    )
    init = subprocess.run(["terraform", "init", "-backend=false", "-input=false", "-no-color"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert init.returncode == 0, init.stderr
    with_logs, plain = (json.loads(_console(f"module.{m}.json", tmp_path)) for m in ("with_logs", "plain"))
    admin = {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
             "Action": "kms:*", "Resource": "*"}  # fmt: skip
    assert plain["Statement"] == [admin]
    assert with_logs["Statement"][0] == admin
    logs = with_logs["Statement"][1]
    assert logs["Principal"] == {"Service": "logs.eu-central-1.amazonaws.com"}
    assert logs["Condition"] == {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": [group]}}


def test_flow_logs_and_their_key_outlive_the_cluster(cluster, storage):
    """`cluster-down` destroys the cluster stack: the 365-day log group and its key live in storage."""
    assert "aws_cloudwatch_log_group" not in cluster["resource"]
    group = storage["resource"]["aws_cloudwatch_log_group"]["flow_logs"]
    assert group["retention_in_days"] == 365 and group["lifecycle"][0]["prevent_destroy"] is True
    assert group["kms_key_id"] == "${aws_kms_key.logs.arn}"
    assert storage["resource"]["aws_kms_key"]["logs"]["lifecycle"][0]["prevent_destroy"] is True
    assert storage["locals"]["flow_log_group_arn"].endswith(":log-group:/${var.project}/vpc-flow-logs")
    assert group["name"] == "/${var.project}/vpc-flow-logs"
    assert cluster["resource"]["aws_flow_log"]["vpc"]["log_destination"] == "${var.flow_log_group_arn}"
    trust = cluster["data"]["aws_iam_policy_document"]["flow_logs_assume"]["statement"][0]
    conditions = {c["variable"]: c["values"] for c in trust["condition"]}
    assert conditions["aws:SourceAccount"] == ["${local.account_id}"]
    assert conditions["aws:SourceArn"] == ["arn:aws:ec2:${var.region}:${local.account_id}:vpc-flow-log/*"]


def test_ray_token_is_in_neither_plan_nor_state(cluster):
    """Ephemeral password into a write-only argument: nothing for `terraform show` to print."""
    for folder in (TF / "cluster", TF / "modules/ray-token"):
        text = "".join(p.read_text() for p in folder.glob("*.tf"))
        assert not re.search(r'resource\s+"random_(password|string)"', text), (
            "a random resource keeps its value in state"
        )
    token = parse_dir(TF / "modules/ray-token")
    parameter = token["resource"]["aws_ssm_parameter"]["token"]
    assert "value" not in parameter and "insecure_value" not in parameter
    assert parameter["value_wo"] == "${ephemeral.aws_secretsmanager_random_password.token.random_password}"
    assert parameter["type"] == "SecureString"
    versions = _clean(hcl2.load((TF / "cluster/versions.tf").open()))["terraform"][0]
    assert versions["required_version"] == ">= 1.11"
    assert "random" not in versions["required_providers"][0]


@needs_terraform
@pytest.mark.parametrize("delta, accepted", [(-1, False), (0, True)])
def test_root_volume_must_hold_the_ami_snapshot(tmp_path, delta, accepted):
    """The variable's validation through real Terraform, against the AMI's volume size."""
    packer = _clean(hcl2.load((PACKER / "carla-ami.pkr.hcl").open()))
    snapshot_gb = next(v for v in packer["variable"] if "volume_size" in v)["volume_size"]["default"]
    shutil.copy(TF / "cluster/variables.tf", tmp_path)
    values = {"root_volume_gb": snapshot_gb + delta, "ami_id": "ami-0123456789abcdef0", "bucket_name": "b",
              "bucket_kms_key_arn": "k", "flow_log_group_arn": "f"}  # fmt: skip
    args = [a for k, v in values.items() for a in ("-var", f"{k}={v}")]
    proc = subprocess.run(["terraform", "console", "-no-color", *args], input="var.root_volume_gb", cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ("must be >= 120" not in proc.stderr) is accepted, proc.stderr
    assert f">= {snapshot_gb}" in (TF / "cluster/variables.tf").read_text()


def test_head_has_a_stable_name_that_workers_join(cluster):
    res, local = cluster["resource"], cluster["locals"]
    record = res["aws_route53_record"]["head"]
    assert (
        record["records"] == ["${aws_instance.head.private_ip}"]
        and record["name"] == "${local.head_dns_name}"
    )
    assert res["aws_route53_zone"]["cluster"]["vpc"][0]["vpc_id"] == "${aws_vpc.this.id}"  # private zone
    assert local["head_dns_name"] == "head.${var.project}.internal"
    user_data = res["aws_launch_template"]["worker"]["user_data"]
    assert "${local.head_dns_name}:${var.ray_port}" in user_data
    assert "private_ip" not in user_data, "an IP in the workers' user_data dies with the head"
    service = (PACKER / "files/ray-node.service").read_text()
    assert "Restart=always" in service, "a worker that lost its head must start again and rejoin by name"
    asg = res["aws_autoscaling_group"]["workers"]
    assert asg["instance_refresh"][0]["strategy"] == "Rolling"


def test_workers_are_held_for_draining_before_any_termination(cluster):
    """Capacity-rebalance and scale-in terminations give no spot notice: a lifecycle hook holds the
    instance long enough for spot-drain.sh's 120 s deadline, then lets it go on its own."""
    asg = cluster["resource"]["aws_autoscaling_group"]["workers"]
    [hook] = asg["initial_lifecycle_hook"]
    assert hook["lifecycle_transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["default_result"] == "CONTINUE" and hook["heartbeat_timeout"] >= 120


def _console(expr: str, workdir: Path) -> str:
    """A string expression evaluated by `terraform console` (base64 on the way: no HCL escaping)."""
    proc = subprocess.run(["terraform", "console", "-no-color"], input=f"base64encode({expr})", cwd=workdir,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return base64.b64decode(proc.stdout.strip().strip('"')).decode()


PLUGIN_DIR = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))


@needs_terraform
@pytest.mark.skipif(
    not PLUGIN_DIR.is_dir(), reason="no local provider mirror (set TF_PLUGIN_DIR) for `terraform validate`"
)
@pytest.mark.parametrize("stack", ["storage", "cluster"])
def test_terraform_validate(tmp_path, stack):
    """Real Terraform with the real AWS provider schema (from a local mirror: no network)."""
    shutil.copytree(TF, tmp_path / "terraform", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    folder = tmp_path / "terraform" / stack
    init = subprocess.run(["terraform", "init", "-backend=false", "-input=false", "-no-color", f"-plugin-dir={PLUGIN_DIR}"],
                          cwd=folder, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    proc = subprocess.run(
        ["terraform", "validate", "-no-color"], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_results_bucket_is_private_encrypted_versioned_and_outlives_the_cluster(storage, cluster):
    res = storage["resource"]
    bucket = res["aws_s3_bucket"]["results"]
    assert bucket["lifecycle"][0]["prevent_destroy"] is True
    block = res["aws_s3_bucket_public_access_block"]["results"]
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    assert res["aws_s3_bucket_versioning"]["results"]["versioning_configuration"][0]["status"] == "Enabled"
    sse = res["aws_s3_bucket_server_side_encryption_configuration"]["results"]["rule"][0]
    assert sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    assert "aws_s3_bucket_lifecycle_configuration" in res
    assert "aws_s3_bucket" not in cluster["resource"], "the bucket lives in its own state, not the cluster's"


def test_everything_is_tagged_through_provider_default_tags():
    for stack in ("cluster", "storage"):
        versions = (TF / stack / "versions.tf").read_text()
        assert "default_tags" in versions and "tags = local.tags" in versions


# ---------------------------------------------------------------------------------------- packer
def test_packer_template_encrypts_requires_imdsv2_tags_and_writes_a_manifest():
    doc = _clean(hcl2.load((PACKER / "carla-ami.pkr.hcl").open()))
    source = doc["source"][0]["amazon-ebs"]["carla"]
    assert source["encrypt_boot"] is True
    assert source["launch_block_device_mappings"][0]["encrypted"] is True
    assert source["imds_support"] == "v2.0"
    assert source["metadata_options"][0]["http_tokens"] == "required"
    assert source["ssh_interface"] == "session_manager"  # no inbound SSH to the build instance
    assert all(k in source for k in ("tags", "run_tags", "snapshot_tags"))
    build = doc["build"][0]
    assert "manifest" in build["post-processor"][0]
    scripts = [s for p in build["provisioner"] for s in p.get("shell", {}).get("scripts", [])]
    smoke = [p["shell"]["script"] for p in build["provisioner"] if "script" in p.get("shell", {})]
    assert len(scripts) == 4 and smoke == ["${path.root}/scripts/05-smoke-test.sh"]
    variables = {k for v in doc["variable"] for k in v}
    assert {"region", "instance_type", "carla_version", "volume_size"} <= variables
    assert next(v for v in doc["variable"] if "carla_version" in v)["carla_version"]["default"] == "0.9.16"
    plugins = _clean(hcl2.load((PACKER / "plugins.pkr.hcl").open()))
    assert plugins["packer"][0]["required_plugins"][0]["amazon"]["source"] == "github.com/hashicorp/amazon"
    assert "required_plugins" not in (PACKER / "carla-ami.pkr.hcl").read_text()


def test_provisioning_scripts_are_strict_bash():
    for script in [*(PACKER / "scripts").glob("*.sh"), *(PACKER / "files").glob("*.sh")]:
        text = script.read_text()
        assert text.startswith("#!/bin/bash"), script
        assert "set -e" in text or "set -u" in text, script
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


# ------------------------------------------------------------------------------------------- CLIs


@needs_terraform
def test_terraform_fmt_is_clean():
    proc = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(TF)], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"unformatted: {proc.stdout}"


@needs_packer
def test_packer_fmt_and_syntax_validate(tmp_path):
    assert subprocess.run(["packer", "fmt", "-check", str(PACKER)], capture_output=True).returncode == 0
    # 1.6.6 (Debian) cannot parse required_plugins: validate the build template alone.
    shutil.copytree(PACKER, tmp_path / "packer", ignore=shutil.ignore_patterns("plugins.pkr.hcl"))
    proc = subprocess.run(
        ["packer", "validate", "-syntax-only", "carla-ami.pkr.hcl"],
        cwd=tmp_path / "packer",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Folders of the base image a provisioner may write into; everything else must be made first.
BASE_IMAGE_DIRS = {"/", "/tmp", "/opt", "/etc", "/home/ubuntu"}


def test_packer_uploads_land_in_folders_that_exist_and_the_scripts_find_them():
    """Walk the build's provisioners in order, as Packer runs them: a file provisioner writes into a
    folder that exists by then (it creates none, packer#3719: scp writes a plain file instead), and
    every /tmp path a script reads was uploaded before it runs."""
    build = _clean(hcl2.load((PACKER / "carla-ami.pkr.hcl").open()))["build"][0]
    folders, uploaded = set(BASE_IMAGE_DIRS), set()
    for provisioner in build["provisioner"]:
        (kind, body), *_ = provisioner.items()
        if kind == "file":
            source = Path(body["source"].replace("${path.root}", str(PACKER)))
            destination = body["destination"].rstrip("/") or "/"
            if body["source"].endswith("/"):  # a folder's contents into destination
                assert destination in folders, (
                    f"file provisioner {body['source']} -> {destination}: no such folder yet"
                )
                uploaded |= {f"{destination}/{f.name}" for f in source.iterdir()}
            else:
                parent = str(Path(destination).parent)
                assert parent in folders, f"file provisioner -> {destination}: no folder {parent} yet"
                uploaded.add(destination)
        elif kind == "shell":
            for command in body.get("inline", []):
                m = re.fullmatch(r"mkdir -p (\S+)", command)
                if m:
                    path = Path(m.group(1))
                    folders |= {str(path), *map(str, path.parents)}
            scripts = body.get("scripts", []) + ([body["script"]] if "script" in body else [])
            for script in scripts:
                text = Path(script.replace("${path.root}", str(PACKER))).read_text()
                for path in re.findall(r"/tmp/[\w.-]+(?:/[\w.-]+)*", text):
                    assert path in uploaded, (
                        f"{Path(script).name} reads {path}, which no provisioner uploaded before it"
                    )
    assert "/tmp/carla-rl-files/ray-node.sh" in uploaded and "/tmp/carla_rl_src.tar.gz" in uploaded


def test_packer_plugin_is_pinned_to_its_major_version():
    plugins = _clean(hcl2.load((PACKER / "plugins.pkr.hcl").open()))
    assert plugins["packer"][0]["required_plugins"][0]["amazon"]["version"] == "~> 1.3"


def _tarball(path: Path, files: dict[str, str]) -> str:
    import hashlib
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("tampered", ["none", "carla", "maps"])
def test_carla_tarballs_are_checked_before_anything_is_extracted_or_run(tmp_path, tampered):
    """02-carla.sh against a local release server: a tarball whose SHA-256 differs from the recorded
    one stops the build before tar or ImportAssets.sh (which runs as root) touches it."""
    import functools
    import http.server
    import threading

    served = tmp_path / "releases"
    served.mkdir()
    marker = tmp_path / "imported"
    carla_sha = _tarball(served / "CARLA_9.9.9.tar.gz", {
        "CarlaUE4.sh": "#!/bin/bash\n", "Import/.keep": "",
        "ImportAssets.sh": f"#!/bin/bash\nls Import > {marker}\n"})  # fmt: skip
    maps_sha = _tarball(served / "AdditionalMaps_9.9.9.tar.gz", {"Town06.umap": "map"})
    expected = {"carla": carla_sha, "maps": maps_sha}
    if tampered != "none":
        expected[tampered] = "0" * 64
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    install = tmp_path / "opt-carla"
    env = {**os.environ, "CARLA_VERSION": "9.9.9", "CARLA_SHA256": expected["carla"],
           "ADDITIONAL_MAPS_SHA256": expected["maps"], "CARLA_BASE_URL": f"http://127.0.0.1:{server.server_port}",
           "CARLA_DIR": str(install), "CARLA_OWNER": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
           "ENVIRONMENT_FILE": str(tmp_path / "environment")}  # fmt: skip
    try:
        proc = subprocess.run(["bash", str(PACKER / "scripts/02-carla.sh")], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    finally:
        server.shutdown()
    if tampered == "none":
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert marker.read_text().split() == ["AdditionalMaps_9.9.9.tar.gz"]
        assert (tmp_path / "environment").read_text() == f"CARLA_ROOT={install}\n"
    else:
        assert proc.returncode != 0
        assert "FAILED" in proc.stdout + proc.stderr, proc.stderr[
            -2000:
        ]  # sha256sum -c names the failed file
        assert not marker.exists() and not (install / "CarlaUE4.sh").exists(), (
            "nothing extracted, nothing run"
        )


def test_ami_python_environment_is_installed_from_a_hashed_lock_that_matches_pyproject():
    """Every requirement pinned with hashes (pip --require-hashes), each pin inside pyproject's range."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    script = (PACKER / "scripts/03-python-env.sh").read_text()
    assert "--require-hashes" in script and "/opt/carla-rl/packer/requirements.lock" in script
    assert not re.search(r"pip install(?![^\n]*--require-hashes)[^\n]*", script), (
        "every pip install is hash-checked"
    )
    lock = (PACKER / "requirements.lock").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", lock, re.M
    )
    pinned = {canonicalize_name(name.split("[")[0]): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^\S+==", lock, re.M)), "a requirement without a hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The nodes train: the env core and the [train] extra.
    for dependency in map(Requirement, project["dependencies"] + project["optional-dependencies"]["train"]):
        name = canonicalize_name(dependency.name)
        assert name in pinned, f"{name} is not in packer/requirements.lock: run `make ami-lock`"
        assert dependency.specifier.contains(pinned[name], prereleases=True), (
            f"lock pins {name}=={pinned[name]}, pyproject wants {dependency.specifier}: run `make ami-lock`"
        )


# --------------------------------------------------------------------- user_data: a real Ray cluster
def render(template: str, variables: dict, workdir: Path) -> str:
    """templatefile() through `terraform console` in an empty folder: real Terraform, no provider."""
    hcl_vars = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in variables.items()) + "}"
    return _console(f'templatefile("{TF / "cluster/templates" / template}", {hcl_vars})', workdir)


def _free_ports(n: int) -> list[int]:
    """n ports free right now (held together while picked, so distinct)."""
    sockets = [socket.create_server(("", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _private_ip() -> str | None:
    """This machine's non-loopback IPv4: what a node's private address is to Ray on EC2."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next(
        (ip for ip in out if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip) and not ip.startswith("127.")), None
    )


def _node_args() -> str:
    """Every port a Ray node opens, free: nothing collides with another Ray on the machine (not
    even the default dashboard agent port 52365)."""
    flags = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--ray-client-server-port"]  # fmt: skip
    ports = _free_ports(len(flags) + 8)
    args = [f"{flag}={port}" for flag, port in zip(flags, ports, strict=False)]
    return " ".join(["--num-cpus=1", *args, "--worker-port-list=" + ",".join(map(str, ports[len(flags) :]))])


def _http_status(url: str) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code  # an answer: 401 without the token
    except OSError:
        return None


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """The head booted by its rendered user_data and ray-node.sh, its node address the machine's
    private (non-loopback) IP, as on EC2, token auth on, every port free."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform CLI not installed")
    ip = _private_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    tmp = tmp_path_factory.mktemp("ray")
    token = tmp / "secret"
    token.write_text("local-test-token-0123456789")
    port, dashboard = _free_ports(2)
    etc = tmp / "head"
    node = f"RAY_BIN={Path(sys.executable).with_name('ray')} bash {PACKER / 'files/ray-node.sh'}"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    common = {"node_user": user, "token_command": f"cat {token}", "node_ip_command": f"echo {ip}",
              "drain_watch": ": spot drain is tested on its own"}  # fmt: skip
    script = tmp / "head.sh"
    script.write_text(render("head.sh.tftpl", {**common, "etc_dir": str(etc), "ray_port": port, "dashboard_port": dashboard,
                      "bucket": "local", "ray_node": f"RAY_ENV_FILE={etc}/env RAY_EXTRA_ARGS='{_node_args()}' {node}"}, tmp))  # fmt: skip
    procs = [_boot(script)]
    head = SimpleNamespace(ip=ip, port=port, dashboard=dashboard, token=token.read_text(), etc=etc, tmp=tmp,
                           common=common, node=node, procs=procs)  # fmt: skip
    try:
        assert _wait_until(lambda: _http_status(f"http://{ip}:{dashboard}/api/version") is not None, 120), (
            "the head's dashboard never answered on its private address"
        )
        yield head
    finally:
        _stop(procs)  # never `ray stop`: it would take down every Ray on the machine
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` records itself here; ours is gone
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    assert not _processes_with(str(etc)) and not _processes_with(f"{ip}:{port}"), (
        "a Ray process outlived the test"
    )


def _boot(script: Path) -> subprocess.Popen:
    """Its own process group, so the test stops exactly what it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


# Runs ops.jobs.job_client in a fresh process, as `python -m ops submit` does: Ray's auth mode and
# token loader are per process, read once.
CLIENT = """
import sys, time
from ops.jobs import job_client
client = job_client(int(sys.argv[1]), sys.argv[2], timeout=20)
from ray.job_submission import JobStatus  # after job_client: it must be the first to import Ray
job_id = client.submit_job(entrypoint=sys.argv[3], runtime_env={"working_dir": sys.argv[4]})
while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
    time.sleep(0.5)
print(status, client.get_job_logs(job_id))
sys.exit(status != JobStatus.SUCCEEDED)
"""


def _client(
    head, local_port: int, token: str, entrypoint: str, working_dir: Path
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a user's shell: no Ray auth set
    return subprocess.run([sys.executable, "-c", CLIENT, str(local_port), token, entrypoint, str(working_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)  # fmt: skip


def test_job_client_sends_the_cluster_token(ray_head, tmp_path):
    """ops.jobs.job_client against a token-auth head: the job runs; a wrong token is refused at once."""
    from tests.fake_aws_ssm import forward

    (local,) = _free_ports(1)
    server = forward(local, ray_head.ip, ray_head.dashboard)  # what the SSM port forward provides
    try:
        ok = _client(ray_head, local, ray_head.token, "python -c \"print('token accepted')\"", tmp_path)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert "SUCCEEDED" in ok.stdout and "token accepted" in ok.stdout
        started = time.monotonic()
        wrong = _client(ray_head, local, "not-the-token", "true", tmp_path)
        assert wrong.returncode != 0 and "refused the token" in wrong.stderr, wrong.stderr[-2000:]
        assert time.monotonic() - started < 20, "a refused token is said at once, not after the timeout"
    finally:
        server.close()


def test_ops_forward_reaches_the_dashboard_on_the_heads_private_ip(ray_head, tmp_path):
    """`python -m ops forward` with the cluster's outputs: the SSM session it starts must reach the
    dashboard, which listens on the head's private IP only (not on the instance's localhost)."""
    outputs = {"head_instance_id": "i-0123456789abcdef0", "head_private_ip": ray_head.ip,
               "dashboard_port": ray_head.dashboard, "ray_token_parameter": "/carla-rl/ray-auth-token",
               "worker_asg_name": "carla-rl-workers", "bucket_name": "results"}  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tf_json = json.dumps({k: {"value": v} for k, v in outputs.items()})
    scripts = {
        "terraform": f"#!/bin/bash\ncat <<'JSON'\n{tf_json}\nJSON\n",
        "aws": f'#!/bin/bash\nexec {sys.executable} {ROOT / "tests/fake_aws_ssm.py"} "$@"\n',
        "session-manager-plugin": "#!/bin/bash\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert _http_status(f"http://127.0.0.1:{ray_head.dashboard}/api/version") is None, "nothing local before"
    proc = subprocess.Popen([sys.executable, "-m", "ops", "forward"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        reached = _wait_until(lambda: _http_status(f"http://127.0.0.1:{ray_head.dashboard}/api/version"), 20)
        assert reached, f"the forward does not reach the dashboard on {ray_head.ip}:{ray_head.dashboard}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def _with_node_env(env_file: Path, *command: str) -> subprocess.CompletedProcess:
    """A command in a node's environment (its /etc/ray/env), as the systemd units run it."""
    script = f'set -a; . "{env_file}"; set +a; exec "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        ["bash", "-c", script, "node", *command], env=env, capture_output=True, text=True, timeout=120
    )


def test_node_id_helper_names_this_machines_node(ray_head):
    """ray-node-id.py (what spot-drain.sh names to `ray drain-node`) answers with the cluster's id of
    the node on this address, not a new local Ray."""
    got = _with_node_env(ray_head.etc / "env", sys.executable, str(PACKER / "files/ray-node-id.py"))
    assert got.returncode == 0, got.stderr[-2000:]
    node_id = got.stdout.strip().splitlines()[-1]
    listing = "import ray; ray.init(); print(*[n['NodeID'] for n in ray.nodes() if n['Alive']])"
    alive = _with_node_env(
        ray_head.etc / "env",
        sys.executable,
        "-c",
        listing.replace("ray.init()", f"ray.init(address='{ray_head.ip}:{ray_head.port}')"),
    )
    assert alive.returncode == 0, alive.stderr[-2000:]
    assert alive.stdout.split() == [node_id], "the head is the only node here; the helper must name it"


def test_rendered_user_data_forms_a_two_node_ray_cluster_that_runs_a_job(ray_head, tmp_path):
    """The worker's rendered user_data joins the head; a job submitted through ops' client with the
    token runs tasks on both nodes."""
    from tests.fake_aws_ssm import forward

    etc = tmp_path / "worker"
    script = tmp_path / "worker.sh"
    script.write_text(render("worker.sh.tftpl", {**ray_head.common, "etc_dir": str(etc), "head_address": f"{ray_head.ip}:{ray_head.port}",
                      "ray_node": f"RAY_ENV_FILE={etc}/env RAY_EXTRA_ARGS='{_node_args()}' {ray_head.node}"}, tmp_path))  # fmt: skip
    assert "RAY_ROLE=worker" in script.read_text()
    assert (ray_head.etc / "token").stat().st_mode & 0o077 == 0, "the token must be private to its owner"
    ray_head.procs.append(_boot(script))
    job = tmp_path / "job"
    job.mkdir()
    (job / "where.py").write_text(
        "import ray\nray.init()\n"
        "@ray.remote\ndef node():\n    return ray.get_runtime_context().get_node_id()\n"
        "ids = ray.get([node.options(resources={'head': 1}).remote(), node.options(resources={'worker': 1}).remote()])\n"
        "print('NODES', len(set(ids)), 'WORKER', ids[1])\n"
    )
    (local,) = _free_ports(1)
    server = forward(local, ray_head.ip, ray_head.dashboard)
    try:
        ran = _client(ray_head, local, ray_head.token, "python where.py", job)
    finally:
        server.close()
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "SUCCEEDED" in ran.stdout and "NODES 2" in ran.stdout
    ray_head.worker = SimpleNamespace(etc=etc, node_id=re.search(r"WORKER ([0-9a-f]+)", ran.stdout).group(1))


def test_spot_drain_drains_the_real_worker(ray_head, tmp_path):
    """spot-drain.sh with the real `ray` in the worker's environment (token auth, head address): the
    cluster's GCS accepts the preemption drain of that worker."""
    worker = getattr(ray_head, "worker", None)
    if worker is None:
        pytest.skip("needs the worker of the two-node test")
    server, state = _fake_imds(spot=True)
    state["warned"] = True
    fake_python = tmp_path / "node-id"  # the lookup itself is tested above; two nodes share this host here
    fake_python.write_text(f"#!/bin/bash\necho {worker.node_id}\n")
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(IMDS_URL=f"http://127.0.0.1:{server.server_port}", RAY_BIN=str(Path(sys.executable).with_name("ray")),
               RAY_PYTHON=str(fake_python), RAY_ENV_FILE=str(worker.etc / "env"), DRAIN_POLL_S="0.2")  # fmt: skip
    try:
        proc = subprocess.run(["bash", str(PACKER / "files/spot-drain.sh")], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "spot interruption notice: draining this Ray node" in proc.stderr


def _fake_imds(spot: bool):
    """IMDSv2 with a switch: no warning until state["warned"], then a spot interruption notice
    (spot) or the auto scaling target lifecycle state Terminated."""
    import http.server
    import threading

    state = {"warned": False, "token_puts": 0}

    class IMDS(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            state["token_puts"] += 1
            self._send(200, b"tok") if self.path == "/latest/api/token" else self._send(404, b"")

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":  # IMDSv2 only
                return self._send(401, b"")
            if self.path == "/latest/meta-data/spot/instance-action" and spot and state["warned"]:
                return self._send(200, b'{"action": "terminate"}')
            if self.path == "/latest/meta-data/autoscaling/target-lifecycle-state":
                return self._send(200, b"Terminated" if state["warned"] and not spot else b"InService")
            self._send(404, b"")

        def _send(self, code, body):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), IMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@pytest.mark.parametrize("warning", ["spot interruption notice", "auto scaling termination"])
def test_spot_drain_drains_the_node_on_either_warning(tmp_path, warning):
    """Nothing at first, then the warning: the script must then ask Ray to drain this node as
    preempted with a deadline (flags checked by Ray 2.60's own CLI), not `ray stop` it."""
    from ray.scripts.scripts import drain_node

    server, state = _fake_imds(spot=warning == "spot interruption notice")
    called = tmp_path / "called"
    fakes = {
        "ray": f'#!/bin/bash\nprintf "%s\\n" "$@" > {called}\n',
        "python": "#!/bin/bash\necho " + "ab" * 28 + "\n",
    }
    for name, text in fakes.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    (tmp_path / "env").write_text("RAY_ROLE=worker\nRAY_HEAD_ADDRESS=head.carla-rl.internal:6379\n")
    env = {**os.environ, "IMDS_URL": f"http://127.0.0.1:{server.server_port}", "RAY_BIN": str(tmp_path / "ray"),
           "DRAIN_POLL_S": "0.2", "RAY_ENV_FILE": str(tmp_path / "env")}  # fmt: skip
    proc = subprocess.Popen(["bash", str(PACKER / "files/spot-drain.sh")], env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: state["token_puts"] >= 2, 10)
        assert proc.poll() is None and not called.exists(), "no warning: keep running"
        state["warned"] = True
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        server.shutdown()
    args = called.read_text().splitlines()
    assert args[0] == "drain-node"
    params = drain_node.make_context("drain-node", args[1:]).params  # Ray's CLI parses the flags
    assert params["reason"] == "DRAIN_NODE_REASON_PREEMPTION" and params["deadline_remaining_seconds"] == 120
    assert params["address"] == "head.carla-rl.internal:6379" and params["reason_message"] == warning
    assert params["node_id"] == "ab" * 28, "the node named explicitly (the default would be a new local Ray)"


def _stop(procs) -> None:
    """TERM each boot script's process group, KILL what is left after 10 s: only what the test started."""
    import signal

    def group_alive(pgid):
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            if group_alive(p.pid):
                os.killpg(p.pid, sig)
        _wait_until(lambda: not any(group_alive(p.pid) for p in procs), 10)
    for p in procs:
        p.wait(timeout=10)


def _processes_with(text: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                out.append(int(proc.name))
        except OSError:
            pass
    return out


def _wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()
