"""The private Ray's reaper, run as a script (``python _reaper.py DRIVER FOLDER MARK``, importing
nothing of lakeinfer) and, for its :func:`sweep`, imported by the driver.

The script holds the read end of a pipe that only the driver writes to, and waits until the pipe
ends or the driver is gone (kill -9 included); then it kills every process of the private Ray and
removes its folder. Ray stops its own head processes when the driver dies, but not its agents,
which would live on."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys


def sweep(folder: str, mark: str, spare: tuple[int, ...] = ()) -> None:
    """Kill every process of a Ray whose files are in ``folder`` (its processes inherit
    ``mark=folder`` in their environment; its agents, which rewrite theirs with their title, hold
    their logs there open), except ``spare`` and this process; then remove ``folder``."""
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid() and int(pid) not in spare and _of(int(pid), folder, mark):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    shutil.rmtree(folder, ignore_errors=True)


def _of(pid: int, folder: str, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            if f"{mark}={folder}".encode() in fh.read().split(b"\0"):
                return True
        inside = folder.rstrip("/") + "/"
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(inside) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # gone, or not ours to read
        return False


def _driver_gone(driver: int) -> bool:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        return True
    return False


def main(argv: list[str]) -> None:
    driver, folder, mark = int(argv[0]), argv[1], argv[2]
    while not _driver_gone(driver):
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not os.read(sys.stdin.fileno(), 1):  # the pipe's end: closed by the driver, or its death
            break
    sweep(folder, mark, spare=(driver,))


if __name__ == "__main__":
    main(sys.argv[1:])
