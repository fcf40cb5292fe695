"""Print one extra's requirements of the installed carla-env distribution (pyproject.toml is the one
dependency list): `python -m ops.requirements cloud`. The Makefile installs the cluster CLI's venv
from it without the env core (no simulator stack, no torch)."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, requires

# A Requires-Dist entry: 'boto3>=1.34; extra == "cloud"'
_EXTRA = re.compile(r"""^(?P<req>[^;]+?)\s*;\s*extra\s*==\s*["'](?P<extra>[^"']+)["']\s*$""")


def extra_requirements(extra: str, distribution: str = "carla-env") -> list[str]:
    out = []
    for entry in requires(distribution) or []:
        m = _EXTRA.match(entry)
        if m and m["extra"] == extra:
            out.append(m["req"])
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ops.requirements EXTRA", file=sys.stderr)
        return 2
    try:
        reqs = extra_requirements(argv[0])
    except PackageNotFoundError:
        print("carla-env is not installed here; run `pip install --no-deps -e .` first", file=sys.stderr)
        return 2
    if not reqs:
        print(
            f"no extra {argv[0]!r} in carla-env's metadata; see [project.optional-dependencies]",
            file=sys.stderr,
        )
        return 2
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
