"""ops, the CLI behind the AWS make targets, with no AWS account: the real terraform CLI where it
answers offline (no state), moto for S3, botocore's Stubber for the Price List, EC2 and Service Quotas
APIs, and the terraform/packer runs recorded at the subprocess boundary."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

ROOT = Path(__file__).resolve().parents[1]


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
        [sys.executable, "-m", "ops", "up"], cwd=ROOT, env=env, capture_output=True, text=True
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
    assert {".git", ".venv", ".venv-infra", ".venv-ops", "runs"} <= set(job["runtime_env"]["excludes"])
    with pytest.raises(OpsError, match="no experiment 'sac'"):
        submit(client, "sac", "results")


@pytest.mark.skipif(not __import__("shutil").which("terraform"), reason="terraform CLI not installed")
@pytest.mark.parametrize(
    "command",
    [["down"], ["status"], ["forward"], ["submit", "dqn"], ["logs", "raysubmit_1"], ["pull", "dqn"]],
)
def test_commands_without_a_cluster_say_so_in_one_line(tmp_path, command):
    """The real terraform CLI on a stack never applied prints `{}`: one line and exit 2, before any
    credentials or network are needed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))  # fmt: skip
    assert not list((ROOT / "terraform/cluster").glob("*.tfstate")), (
        "this test needs a checkout with no cluster"
    )
    proc = subprocess.run([sys.executable, "-m", "ops", *command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "ops: no Terraform state for terraform/cluster: run `make cluster-up` first"


# ---------------------------------------------------------------- before anything is created
class StubbedSession:
    """boto3 clients whose answers are queued with botocore's Stubber (which also checks each
    request against the service model and the expected parameters)."""

    def __init__(self):
        self.stubbers = {}
        self._clients = {}

    def client(self, name, region_name=None):
        if name not in self._clients:
            session = boto3.Session(
                aws_access_key_id="x", aws_secret_access_key="x", region_name=region_name or "us-west-2"
            )
            self._clients[name] = session.client(name)
            self.stubbers[name] = Stubber(self._clients[name])
            self.stubbers[name].activate()
        return self._clients[name]

    def stub(self, name, region_name=None):
        self.client(name, region_name)
        return self.stubbers[name]

    def assert_all_used(self):
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


def _price(instance_type, region, usd):
    product = {"product": {"attributes": {"instanceType": instance_type, "regionCode": region}},
               "terms": {"OnDemand": {"T": {"priceDimensions": {"D": {"unit": "Hrs", "pricePerUnit": {"USD": str(usd)}}}}}}}  # fmt: skip
    return json.dumps(product)


def _queue_prices(session, region, on_demand: dict, spot: dict):
    pricing, ec2 = session.stub("pricing", "us-east-1"), session.stub("ec2", region)
    for instance_type, usd in on_demand.items():
        filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
                   "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}  # fmt: skip
        pricing.add_response(
            "get_products",
            {"PriceList": [_price(instance_type, region, usd)]},
            {"ServiceCode": "AmazonEC2",
             "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()]},
        )  # fmt: skip
    for instance_type, usd in spot.items():
        history = [{"InstanceType": instance_type, "SpotPrice": str(usd + extra), "AvailabilityZone": f"{region}{z}",
                    "ProductDescription": "Linux/UNIX", "Timestamp": datetime.now(timezone.utc)}
                   for z, extra in (("a", 0.05), ("b", 0.0))]  # fmt: skip
        ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": history})


def _queue_quotas(session, region, vcpus: dict, quotas: dict):
    session.stub("ec2", region).add_response(
        "describe_instance_types",
        {"InstanceTypes": [{"InstanceType": t, "VCpuInfo": {"DefaultVCpus": v}} for t, v in vcpus.items()]},
        {"InstanceTypes": sorted(vcpus)},
    )
    for code, value in quotas.items():
        session.stub("service-quotas", region).add_response(
            "get_service_quota",
            {"Quota": {"QuotaCode": code, "QuotaName": f"quota {code}", "Value": value}},
            {"ServiceCode": "ec2", "QuotaCode": code},
        )


def test_cost_estimate_prices_the_configured_types_in_the_configured_region():
    from ops.cluster import cost_estimate

    session = StubbedSession()
    _queue_prices(session, "eu-central-1", {"g6.xlarge": 1.0, "g6.4xlarge": 2.0, "g5.8xlarge": 3.0},
                  {"g6.4xlarge": 0.7, "g5.8xlarge": 0.9})  # fmt: skip
    values = {"head_instance_type": "g6.xlarge", "worker_instance_types": ["g6.4xlarge", "g5.8xlarge"],
              "worker_desired": 3, "worker_max": 5, "az_count": 1}  # fmt: skip
    est = cost_estimate(session, "eu-central-1", values)
    session.assert_all_used()
    assert est["region"] == "eu-central-1" and est["head_per_hour"] == 1.0
    assert est["workers_per_hour_spot"] == pytest.approx(3 * 0.7)  # the cheapest zone of the cheapest type
    assert est["endpoints_per_hour"] == pytest.approx(0.03)
    assert est["total_per_hour"] == pytest.approx(1.0 + 2.1 + 0.03, abs=0.01)
    assert est["worst_case_per_hour_on_demand_at_max"] == pytest.approx(1.0 + 5 * 3.0 + 0.03, abs=0.01)


def test_gpu_vcpu_quota_too_small_is_one_line_with_the_request_command():
    from ops.cluster import check_gpu_quota
    from ops.tools import OpsError

    session = StubbedSession()
    _queue_quotas(
        session, "us-east-1", {"g5.2xlarge": 8, "g4dn.xlarge": 4}, {"L-DB2E81BA": 8, "L-3819A6DF": 0}
    )
    values = {"head_instance_type": "g5.2xlarge", "worker_instance_types": ["g5.2xlarge", "g4dn.xlarge"],
              "worker_desired": 2}  # fmt: skip
    with pytest.raises(OpsError) as e:
        check_gpu_quota(session, "us-east-1", values)
    message = str(e.value)
    assert "L-3819A6DF" in message and "is 0 vCPUs, the cluster needs 16" in message
    assert "aws service-quotas request-service-quota-increase --region us-east-1" in message
    assert "\n" not in message
    session = StubbedSession()
    _queue_quotas(
        session, "us-east-1", {"g5.2xlarge": 8, "g4dn.xlarge": 4}, {"L-DB2E81BA": 8, "L-3819A6DF": 16}
    )
    check_gpu_quota(session, "us-east-1", values)
    session.assert_all_used()


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """terraform runs recorded instead of run; an AMI recorded; terraform and the plugin on PATH."""
    from ops import cluster

    calls = []
    monkeypatch.setattr(cluster, "run", lambda cmd, **kw: calls.append(cmd) or "")
    monkeypatch.setattr(cluster, "terraform_outputs", lambda stack, required=(): (
        {"bucket_name": "b", "kms_key_arn": "k", "flow_log_group_arn": "f"} if stack == cluster.STORAGE
        else {"head_instance_id": "i-1"}))  # fmt: skip
    monkeypatch.setattr(cluster, "CLUSTER", tmp_path)
    (tmp_path / "ami.auto.tfvars.json").write_text('{"ami_id": "ami-0123456789abcdef0"}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("terraform", "session-manager-plugin"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return calls


def _session_for_up(quota=64):
    session = StubbedSession()
    _queue_quotas(session, "us-west-2", {"g5.2xlarge": 8}, {"L-DB2E81BA": quota, "L-3819A6DF": quota})
    if quota >= 16:
        _queue_prices(session, "us-west-2", {"g5.2xlarge": 1.212}, {"g5.2xlarge": 0.5})
    return session


VALUES = {"worker_instance_types": ["g5.2xlarge"], "worker_desired": 2, "worker_max": 4}


def test_cluster_up_creates_nothing_before_the_checks_and_the_answer(recorded, tmp_path, monkeypatch, capsys):
    from ops import cluster
    from ops.tools import OpsError

    with pytest.raises(OpsError, match=r"EC2 quota .* is 0 vCPUs, the cluster needs 8"):
        cluster.up(_session_for_up(quota=0), "us-west-2", "carla-rl", VALUES, yes=True)
    assert recorded == [], "a quota that cannot fit the cluster stops it before the storage stack"
    with pytest.raises(OpsError, match="cancelled; nothing was created"):
        cluster.up(_session_for_up(), "us-west-2", "carla-rl", VALUES, yes=False, confirm=lambda prompt: "n")
    assert recorded == [], "nothing, not even the bucket, before the answer"
    out = capsys.readouterr().out
    assert "head: 1 x g5.2xlarge on demand" in out and "workers: 2 (max 4) spot of g5.2xlarge" in out
    assert (
        "estimated cost (USD/hour): region us-west-2, head_per_hour 1.212, workers_per_hour_spot 1.0" in out
    )
    (tmp_path / "bin/session-manager-plugin").unlink()
    with pytest.raises(
        OpsError, match="session-manager-plugin not found on PATH; install the AWS Session Manager plugin"
    ):
        cluster.up(_session_for_up(), "us-west-2", "carla-rl", VALUES, yes=True)
    assert recorded == []


def test_cluster_up_applies_storage_then_the_cluster_with_its_outputs(recorded):
    from ops import cluster

    session = _session_for_up()
    assert cluster.up(session, "us-west-2", "carla-rl", VALUES, yes=True) == {"head_instance_id": "i-1"}
    session.assert_all_used()
    applies = [c for c in recorded if c[2] == "apply"]
    assert [c[1] for c in applies] == [f"-chdir={cluster.STORAGE}", f"-chdir={cluster.CLUSTER}"]
    assert {"bucket_name=b", "bucket_kms_key_arn=k", "flow_log_group_arn=f", "worker_desired=2"} <= set(
        applies[1]
    )


def test_carla_checksums_come_from_the_recorded_file(tmp_path):
    from ops.ami import carla_checksums
    from ops.tools import OpsError

    sums = tmp_path / "carla.sha256"
    sums.write_text("# comment\n" + "a" * 64 + "  CARLA_0.9.16.tar.gz\n")
    with pytest.raises(
        OpsError, match=r"no SHA-256 for AdditionalMaps_0.9.16.tar.gz in .*carla.sha256: .*sha256sum"
    ):
        carla_checksums("0.9.16", sums)
    sums.write_text(sums.read_text() + "b" * 64 + " *AdditionalMaps_0.9.16.tar.gz\n")
    assert carla_checksums("0.9.16", sums) == {"carla_sha256": "a" * 64, "additional_maps_sha256": "b" * 64}


def test_make_ami_without_checksums_stops_before_any_work(tmp_path, monkeypatch):
    from ops import ami
    from ops.tools import OpsError

    (tmp_path / "packer").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "packer").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ami, "CHECKSUMS", tmp_path / "carla.sha256")
    monkeypatch.setattr(
        ami, "pack_source", lambda: pytest.fail("packed the source before the checksum check")
    )
    with pytest.raises(OpsError, match="no SHA-256 for CARLA_0.9.16.tar.gz"):
        ami.build("us-west-2", "0.9.16")


def test_cluster_down_destroys_a_half_applied_cluster_that_has_no_outputs(recorded, monkeypatch):
    """A failed apply can leave billable resources and no outputs: down goes by the resources."""
    from ops import cluster

    monkeypatch.setattr(
        cluster, "run", lambda cmd, **kw: recorded.append(cmd) or ("aws_vpc.this\n" if "state" in cmd else "")
    )
    cluster.down("us-west-2", "carla-rl")
    destroy = recorded[-1]
    assert destroy[1:3] == [f"-chdir={cluster.CLUSTER}", "destroy"]
    assert {"bucket_name=b", "flow_log_group_arn=f", "ami_id=ami-0123456789abcdef0"} <= set(destroy)


def test_submit_names_a_mistyped_experiment_before_it_needs_a_cluster():
    """`make submit EXP=dqm` says so at once, with no cluster, state or credentials needed."""
    proc = subprocess.run([sys.executable, "-m", "ops", "submit", "dqm"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "ops: no experiment 'dqm': the experiments are dqn, ppo (make submit EXP=NAME)"
    )
