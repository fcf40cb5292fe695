"""The external CLIs and AWS credentials, with one-line errors that say what to install or set.

We drive terraform and packer through their CLIs (-json output) rather than python-terraform,
which has been unmaintained since 2019 and predates terraform's JSON interfaces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = {
    "terraform": "install Terraform >= 1.6: https://developer.hashicorp.com/terraform/install",
    "packer": "install Packer >= 1.10: https://developer.hashicorp.com/packer/install",
    "aws": "install the AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html",
    "session-manager-plugin": "install the AWS Session Manager plugin (the only way to the head): https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html",
}


class OpsError(RuntimeError):
    """A user-facing failure; str(e) is the one line to print (exit code 2)."""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise OpsError(f"{tool} not found on PATH; {INSTALL[tool]}")
    return path


def run(cmd: list[str], cwd: Path | None = None, capture: bool = False) -> str:
    """Run a CLI; a failure is an OpsError naming the command (its own output already shown)."""
    require(cmd[0])
    proc = subprocess.run(cmd, cwd=cwd, text=True, capture_output=capture)
    if proc.returncode != 0:
        detail = f": {proc.stderr.strip().splitlines()[-1]}" if capture and proc.stderr.strip() else ""
        raise OpsError(f"`{' '.join(cmd[:3])}` failed with exit code {proc.returncode}{detail}")
    return proc.stdout if capture else ""


def aws_account(session) -> str:
    """The caller's account id; no credentials is an OpsError saying how to provide them."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return session.client("sts").get_caller_identity()["Account"]
    except NoCredentialsError:
        raise OpsError(
            "no AWS credentials: run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
        ) from None
    except (BotoCoreError, ClientError) as e:
        raise OpsError(f"AWS credentials rejected: {e}") from None


def terraform_outputs(stack: Path, required: tuple[str, ...] = ()) -> dict:
    """A stack's outputs; with `required`, a stack that was never applied (no state, `{}`) or lacks
    one of them is an OpsError saying so, not a KeyError later."""
    raw = json.loads(run(["terraform", f"-chdir={stack}", "output", "-json"], capture=True) or "{}")
    outputs = {k: v["value"] for k, v in raw.items()}
    missing = [k for k in required if k not in outputs]
    if missing:
        state = "no Terraform state" if not outputs else f"no output {missing[0]!r} in its Terraform state"
        where = stack.relative_to(ROOT) if stack.is_relative_to(ROOT) else stack
        raise OpsError(f"{state} for {where}: run `make cluster-up` first")
    return outputs
