"""Infra, offline: Terraform and Packer parsed (python-hcl2) and checked property by property, the
CLIs' own checks where installed, the node user_data rendered by real Terraform and run to form a
two-node Ray cluster, and ops against moto / a mocked subprocess boundary. No AWS account is used."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[1]
TF = ROOT / "terraform"
PACKER = ROOT / "packer"
RAY_PORTS = {6379, 8265, 10001}


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
    out: dict = {"resource": {}, "data": {}, "locals": {}, "variable": {}, "output": {}}
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
        for key in ("variable", "output"):
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
    assert "aws_instance.head.private_ip" in res["aws_launch_template"]["worker"]["user_data"]
    for var in ("worker_min", "worker_max", "worker_desired", "az_count", "vpc_cidr", "ami_id"):
        assert cluster["variable"][var].get("validation"), f"variable {var} needs a validation block"


def test_node_role_is_least_privilege(cluster):
    policy = cluster["data"]["aws_iam_policy_document"]["node"]["statement"]
    for statement in policy:
        assert statement["resources"] != ["*"], statement["sid"]
        assert not any(a.endswith(":*") for a in statement["actions"]), statement["sid"]
    s3 = [s for s in policy if any(a.startswith("s3:") for a in s["actions"])]
    assert all("var.bucket_name" in r for s in s3 for r in s["resources"])
    attached = cluster["resource"]["aws_iam_role_policy_attachment"]
    assert [a["policy_arn"] for a in attached.values()] == [
        "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    ]


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
needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer CLI not installed")


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


# --------------------------------------------------------------------- user_data: a real Ray cluster
def render(template: str, variables: dict, workdir: Path) -> str:
    """templatefile() through `terraform console` in an empty folder: real Terraform, no provider."""
    hcl_vars = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in variables.items()) + "}"
    expr = f'base64encode(templatefile("{TF / "cluster/templates" / template}", {hcl_vars}))'
    proc = subprocess.run(
        ["terraform", "console"], input=expr, cwd=workdir, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return base64.b64decode(proc.stdout.strip().strip('"')).decode()


@needs_terraform
def test_rendered_user_data_forms_a_two_node_ray_cluster_that_runs_a_job(tmp_path):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_AUTH_MODE", None)
    token = tmp_path / "secret"
    token.write_text("local-test-token-0123456789")
    port, dashboard = 40000 + os.getpid() % 2000, 42000 + os.getpid() % 2000
    common = {
        "node_user": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
        "token_command": f"cat {token}",
        "node_ip_command": "echo 127.0.0.1",
        "drain_watch": ": spot drain is tested on its own",
    }
    head_etc, worker_etc = tmp_path / "head", tmp_path / "worker"
    node = f"RAY_BIN={ray_bin} bash {PACKER / 'files/ray-node.sh'}"
    head = render("head.sh.tftpl", {**common, "etc_dir": str(head_etc), "ray_port": port, "dashboard_port": dashboard,
                                    "bucket": "local", "ray_node": f"RAY_ENV_FILE={head_etc}/env RAY_EXTRA_ARGS=--num-cpus=1 {node}"}, tmp_path)  # fmt: skip
    worker = render("worker.sh.tftpl", {**common, "etc_dir": str(worker_etc), "head_address": f"127.0.0.1:{port}",
                                        "ray_node": f"RAY_ENV_FILE={worker_etc}/env RAY_EXTRA_ARGS=--num-cpus=1 {node}"}, tmp_path)  # fmt: skip
    assert "RAY_ROLE=head" in head and f"RAY_HEAD_ADDRESS=127.0.0.1:{port}" in worker
    (tmp_path / "head.sh").write_text(head)
    (tmp_path / "worker.sh").write_text(worker)
    auth = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head_etc / "token")}

    def boot(script):  # its own process group, so the test stops exactly what it started
        return subprocess.Popen(
            ["bash", str(script)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    procs = [boot(tmp_path / "head.sh")]
    job = tmp_path / "job"
    job.mkdir()
    (job / "where.py").write_text(
        "import ray\nray.init()\n"
        "@ray.remote\ndef node():\n    return ray.get_runtime_context().get_node_id()\n"
        "ids = ray.get([node.options(resources={'head': 1}).remote(), node.options(resources={'worker': 1}).remote()])\n"
        "print('NODES', len(set(ids)))\n"
    )
    # The client in its own process: Ray's token loader is a per-process singleton.
    client = tmp_path / "client.py"
    client.write_text(CLIENT.format(dashboard=dashboard, job=job))
    try:
        waited = subprocess.run(
            [sys.executable, str(client), "wait"], env=auth, capture_output=True, text=True, timeout=120
        )
        assert waited.returncode == 0, waited.stderr[-2000:]
        assert (head_etc / "token").stat().st_mode & 0o077 == 0, "the token must be private to its owner"
        procs.append(boot(tmp_path / "worker.sh"))
        ran = subprocess.run(
            [sys.executable, str(client), "run"], env=auth, capture_output=True, text=True, timeout=180
        )
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        assert "SUCCEEDED" in ran.stdout and "NODES 2" in ran.stdout
        wrong = subprocess.run([sys.executable, str(client), "wait"], env={**auth, "RAY_AUTH_TOKEN_PATH": str(token) + ".x"},
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert wrong.returncode != 0, "the Jobs API must refuse a client without the cluster's token"
        _stop(procs)
        assert _wait_until(
            lambda: not _processes_with(str(head_etc)) and not _processes_with(f"127.0.0.1:{port}"), 30
        )
    finally:
        _stop(procs)  # never `ray stop`: it would take down every Ray on the machine
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` records itself here; ours is gone
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


CLIENT = """
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
deadline = time.monotonic() + 90
while True:
    try:
        client = JobSubmissionClient("http://127.0.0.1:{dashboard}")
        break
    except Exception as e:
        if time.monotonic() > deadline or "uthenticat" in str(e):
            raise
        time.sleep(1)
if sys.argv[1] == "run":
    job_id = client.submit_job(entrypoint="python where.py", runtime_env={{"working_dir": "{job}"}})
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.5)
    print(status, client.get_job_logs(job_id))
    sys.exit(status != JobStatus.SUCCEEDED)
"""


def test_spot_drain_stops_ray_on_an_interruption_notice(tmp_path):
    """A fake IMDSv2: no notice at first, then one; the drain script must run `ray stop` then."""
    import http.server
    import threading

    state = {"notice": False, "token_puts": 0}

    class IMDS(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            state["token_puts"] += 1
            self._send(200, b"tok") if self.path == "/latest/api/token" else self._send(404, b"")

        def do_GET(self):
            ok = self.path == "/latest/meta-data/spot/instance-action" and state["notice"]
            ok = ok and self.headers.get("X-aws-ec2-metadata-token") == "tok"  # IMDSv2 only
            self._send(200 if ok else 404, b'{"action": "terminate"}' if ok else b"")

        def _send(self, code, body):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), IMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(f'#!/bin/bash\necho "$@" > {tmp_path / "called"}\n')
    fake_ray.chmod(0o755)
    env = {
        **os.environ,
        "IMDS_URL": f"http://127.0.0.1:{server.server_port}",
        "RAY_BIN": str(fake_ray),
        "DRAIN_POLL_S": "0.2",
    }
    proc = subprocess.Popen(["bash", str(PACKER / "files/spot-drain.sh")], env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: state["token_puts"] >= 2, 10)
        assert proc.poll() is None and not (tmp_path / "called").exists(), "no notice: keep running"
        state["notice"] = True
        assert proc.wait(timeout=10) == 0
        assert (tmp_path / "called").read_text().strip() == "stop"
    finally:
        proc.kill()
        server.shutdown()


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


# -------------------------------------------------------------------------------------------- ops
def test_ops_never_imports_carla_env():
    code = "import sys, ops.__main__, ops.ami, ops.cluster, ops.jobs; sys.exit(any(m.startswith('carla_env') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_missing_cli_and_credentials_are_one_line_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))  # fmt: skip
    ami = subprocess.run(
        [sys.executable, "-m", "ops", "ami"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert ami.returncode == 2
    assert ami.stderr.strip().startswith("ops: packer not found on PATH; install Packer >= 1.10")
    assert len(ami.stderr.strip().splitlines()) == 1
    status = subprocess.run(
        [sys.executable, "-m", "ops", "status"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert status.returncode == 2
    assert (
        status.stderr.strip()
        == "ops: no AWS credentials: run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
    )


def test_manifest_gives_the_ami_and_it_is_recorded_for_terraform(tmp_path):
    from ops.ami import ami_from_manifest, record_ami
    from ops.tools import OpsError

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"last_run_uuid": "b", "builds": [
        {"packer_run_uuid": "a", "artifact_id": "us-west-2:ami-0aaaaaaaaaaaaaaaa"},
        {"packer_run_uuid": "b", "artifact_id": "us-west-2:ami-0bbbbbbbbbbbbbbbb"}]}))  # fmt: skip
    assert ami_from_manifest(manifest) == "ami-0bbbbbbbbbbbbbbbb"
    record_ami("ami-0bbbbbbbbbbbbbbbb", tmp_path / "ami.auto.tfvars.json")
    assert json.loads((tmp_path / "ami.auto.tfvars.json").read_text()) == {"ami_id": "ami-0bbbbbbbbbbbbbbbb"}
    with pytest.raises(OpsError, match="no Packer manifest"):
        ami_from_manifest(tmp_path / "missing.json")


@pytest.fixture
def aws(monkeypatch):
    moto = pytest.importorskip("moto")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
    }.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        import boto3

        yield boto3.Session(region_name="us-west-2")


def test_find_ami_takes_our_newest_by_tag(aws):
    from ops.ami import find_ami

    ec2 = aws.client("ec2")
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)
    instance = reservation["Instances"][0]["InstanceId"]
    made = []
    for version in ("0.9.15", "0.9.16", "0.9.16"):
        image = ec2.create_image(InstanceId=instance, Name=f"carla-{version}-{len(made)}")["ImageId"]
        ec2.create_tags(
            Resources=[image],
            Tags=[{"Key": "Project", "Value": "carla-rl"}, {"Key": "CarlaVersion", "Value": version}],
        )
        made.append(image)
        time.sleep(1.1)  # distinct CreationDate seconds
    assert find_ami(ec2, "carla-rl", "0.9.16") == made[2]
    assert find_ami(ec2, "other", "0.9.16") is None


def test_pull_results_mirrors_a_run_from_s3(aws, tmp_path):
    from ops.jobs import pull_results
    from ops.tools import OpsError

    s3 = aws.client("s3")
    s3.create_bucket(Bucket="results", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    for key in ("runs/dqn/carla_env_config.yaml", "runs/dqn/trial/checkpoint_000001/a.pt", "runs/ppo/x"):
        s3.put_object(Bucket="results", Key=key, Body=key.encode())
    got = pull_results(s3, "results", "dqn", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in got) == [
        "dqn/carla_env_config.yaml",
        "dqn/trial/checkpoint_000001/a.pt",
    ]
    assert (
        tmp_path / "dqn/trial/checkpoint_000001/a.pt"
    ).read_bytes() == b"runs/dqn/trial/checkpoint_000001/a.pt"
    with pytest.raises(OpsError, match="nothing under s3://results/runs/sac/"):
        pull_results(s3, "results", "sac", tmp_path)


def test_submit_ships_the_repo_and_trains_into_the_bucket():
    """`make submit EXP=dqn`: the Jobs API gets the repo as working_dir (no venvs, runs, git) and an
    entrypoint train.py accepts, storing the run in the results bucket."""
    import shlex
    from unittest.mock import create_autospec

    from ray.job_submission import JobSubmissionClient

    from ops.jobs import submit
    from ops.tools import OpsError
    from train import parse_args

    client = create_autospec(JobSubmissionClient, instance=True)
    client.submit_job.return_value = "raysubmit_1"
    assert submit(client, "dqn", "results", "--name night --restore") == "raysubmit_1"
    job = client.submit_job.call_args.kwargs
    command = shlex.split(job["entrypoint"])
    assert command[:2] == ["python", "train.py"]
    args = parse_args(command[2:])
    assert (args.config, args.address, args.dir) == (
        "experiments/dqn/config.yaml",
        "auto",
        "s3://results/runs",
    )
    assert args.name == "night" and args.restore
    assert job["runtime_env"]["working_dir"] == str(ROOT)
    assert {".git", ".venv", ".venv-infra", "runs"} <= set(job["runtime_env"]["excludes"])
    with pytest.raises(OpsError, match="no experiment 'sac'"):
        submit(client, "sac", "results")


def test_cluster_up_applies_storage_first_prints_cost_and_can_be_cancelled(monkeypatch, tmp_path, capsys):
    from ops import cluster
    from ops.tools import OpsError

    calls = []
    monkeypatch.setattr(cluster, "run", lambda cmd, **kw: calls.append(cmd) or "")
    monkeypatch.setattr(
        cluster,
        "terraform_outputs",
        lambda stack: (
            {"bucket_name": "b", "kms_key_arn": "k"}
            if stack == cluster.STORAGE
            else {"head_instance_id": "i-1"}
        ),
    )
    monkeypatch.setattr(cluster, "CLUSTER", tmp_path)
    with pytest.raises(OpsError, match="no AMI recorded .* run `make ami` first"):
        cluster.up("us-west-2", "carla-rl", {}, yes=True)
    (tmp_path / "ami.auto.tfvars.json").write_text('{"ami_id": "ami-0123456789abcdef0"}')
    with pytest.raises(OpsError, match="cancelled"):
        cluster.up("us-west-2", "carla-rl", {"worker_desired": 2}, yes=False, confirm=lambda prompt: "n")
    assert all(str(cluster.STORAGE) in c[1] for c in calls), "nothing but storage before the answer"
    assert "estimated cost (USD/hour)" in capsys.readouterr().out
    calls.clear()
    assert cluster.up("us-west-2", "carla-rl", {"worker_desired": 2}, yes=True) == {"head_instance_id": "i-1"}
    applies = [c for c in calls if c[2] == "apply"]
    assert [c[1] for c in applies] == [f"-chdir={cluster.STORAGE}", f"-chdir={tmp_path}"]
    assert "bucket_name=b" in applies[1] and "worker_desired=2" in applies[1]


def test_cost_estimate_counts_head_spot_workers_and_endpoints():
    from ops.cluster import HOURLY, cost_estimate

    est = cost_estimate({"head_instance_type": "g5.2xlarge", "worker_instance_types": ["g5.2xlarge", "g4dn.2xlarge"],
                         "worker_desired": 2, "worker_max": 8, "az_count": 2})  # fmt: skip
    assert est["head_per_hour"] == HOURLY["g5.2xlarge"]
    assert est["workers_per_hour_spot"] == pytest.approx(2 * HOURLY["g4dn.2xlarge"] * 0.4, abs=1e-3)
    assert est["total_per_hour"] == pytest.approx(
        est["head_per_hour"] + est["workers_per_hour_spot"] + 0.06, abs=0.01
    )
    assert est["worst_case_per_hour_on_demand_at_max"] > est["total_per_hour"]
