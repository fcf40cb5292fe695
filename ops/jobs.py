"""Training on the cluster: an SSM port forward to the head's Jobs API, submission with the repo as
working_dir, log streaming, and results pulled from S3."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from ops.tools import ROOT, OpsError, require

DASHBOARD = "http://127.0.0.1:{port}"
EXCLUDES = [
    ".git",
    ".venv",
    ".venv-infra",
    ".venv-ops",
    "runs",
    "dist",
    "docs/results",
    "*.mp4",
    "terraform/**/.terraform",
]
# The dashboard binds the head's private address, not localhost: the plain
# AWS-StartPortForwardingSession (which connects to localhost on the instance) cannot reach it.
FORWARD_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"


def port_forward(instance_id: str, region: str, host: str, port: int, local_port: int) -> subprocess.Popen:
    """`aws ssm start-session` forwarding 127.0.0.1:local_port, through the head's SSM agent, to
    host:port (the dashboard on the head's private address). No open port anywhere."""
    require("aws")
    require("session-manager-plugin")
    parameters = {"host": [host], "portNumber": [str(port)], "localPortNumber": [str(local_port)]}
    return subprocess.Popen(
        ["aws", "ssm", "start-session", "--region", region, "--target", instance_id,
         "--document-name", FORWARD_DOCUMENT, "--parameters", json.dumps(parameters)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def ray_token(ssm, parameter: str) -> str:
    return ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]


def job_client(port: int, token: str, timeout: float = 60.0):
    """A JobSubmissionClient once the forwarded port answers, sending the cluster's token.

    Ray reads RAY_AUTH_MODE once, when ray.job_submission is first imported: the variables are set
    before that import, or the client sends no token ("Missing authentication token")."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray.job_submission import JobSubmissionClient

    if not is_token_auth_enabled():  # Ray was imported earlier in this process, with auth off
        raise OpsError(
            "Ray was imported before ops.jobs.job_client could turn on its token auth; submit from a fresh process"
        )

    deadline = time.monotonic() + timeout
    while True:
        try:
            return JobSubmissionClient(DASHBOARD.format(port=port))
        except Exception as e:
            if "uthenticat" in str(e):  # a wrong token does not get better by waiting
                raise OpsError(f"the Ray Jobs API on localhost:{port} refused the token: {e}") from None
            if time.monotonic() > deadline:
                raise OpsError(f"no Ray Jobs API on localhost:{port} after {timeout:.0f} s: {e}") from None
            time.sleep(1.0)


def check_experiment(exp: str) -> None:
    """A typo in EXP is said here, before any cluster is needed (or paid for)."""
    if not (ROOT / "experiments" / exp / "config.yaml").is_file():
        found = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/config.yaml"))
        raise OpsError(
            f"no experiment {exp!r}: the experiments are {', '.join(found)} (make submit EXP=NAME)"
        )


def submit(client, exp: str, bucket: str, extra_args: str = "") -> str:
    check_experiment(exp)
    entrypoint = (
        f"python train.py experiments/{exp}/config.yaml --address auto --dir s3://{bucket}/runs {extra_args}"
    )
    return client.submit_job(
        entrypoint=entrypoint.strip(), runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES}
    )


async def stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def pull_results(s3, bucket: str, run: str, dest: Path = ROOT / "runs") -> list[Path]:
    """Download s3://bucket/runs/<run>/ into runs/<run>/ (what `make infer` reads)."""
    prefix = f"runs/{run}/"
    paginator = s3.get_paginator("list_objects_v2")
    keys = [
        o["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    if not keys:
        raise OpsError(f"nothing under s3://{bucket}/{prefix}; check the run name (`make cluster-status`)")
    out = []
    for key in keys:
        target = dest / key[len("runs/") :]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
        out.append(target)
    return out
