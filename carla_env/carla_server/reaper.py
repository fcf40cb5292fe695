"""Kills a server's process group when the process that launched it dies (even by kill -9).

    python -m carla_env.carla_server.reaper PARENT_PID PGID

Runs in its own session; exits once the group is gone, so a reused PGID is never touched.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(parent: int, pgid: int, poll: float = 0.25, grace: float = 5.0) -> None:
    while group_alive(pgid):
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        time.sleep(poll)
    else:
        return
    try:  # the group may end on its own between the checks
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
