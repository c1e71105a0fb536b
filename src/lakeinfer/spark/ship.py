"""A model shipped to a cluster: packed once on the driver, added to the session as an artifact named
by its digest (Spark Connect and classic alike), placed once per model on each machine."""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import Any

from .. import errors
from ..models import model_digest

__all__ = ["add_artifact", "artifact_bytes", "artifact_name", "model_on_disk", "pack"]

PLACED = ".placed.json"  # beside the model in its folder: what was placed, to check a reuse against
UNUSED_FOR_S = 7 * 24 * 3600  # a model's folder no job has used for this long is removed


def pack(path: str) -> bytes:
    """The model's bytes: a file as it is, a folder as an uncompressed zip of its files in order,
    without their times, so that one model always packs to the same bytes."""
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        for full in files:
            entry = zipfile.ZipInfo(os.path.relpath(full, path), date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = (os.stat(full).st_mode & 0o777) << 16
            with open(full, "rb") as fh:
                archive.writestr(entry, fh.read())
    return buffer.getvalue()


def artifact_name(digest: str, name: str, is_dir: bool) -> str:
    """The session artifact that carries a model: named by its digest, since a Spark Connect
    session refuses a second artifact of one name with other bytes."""
    return f"lakeinfer-{digest[:32]}-{name}{'.zip' if is_dir else ''}"


_PACKED: dict[str, str] = {}  # artifact name -> the packed file this process shipped it from


def add_artifact(spark: Any, path: str, digest: str) -> str:
    """Ship the model at ``path`` to the session's workers as a file artifact; its name.

    The same call serves Spark Connect (an upload to the server) and a classic session
    (``addFile``, whose file server reads the packed file until the process exits).
    """
    is_dir = os.path.isdir(path)
    name = artifact_name(digest, os.path.basename(path.rstrip("/")), is_dir)
    packed = _PACKED.get(name)
    if packed is None or not os.path.exists(packed):
        folder = tempfile.mkdtemp(prefix="lakeinfer-ship-")
        atexit.register(shutil.rmtree, folder, True)
        packed = os.path.join(folder, name)
        with open(packed, "wb") as fh:
            fh.write(pack(path))
        _PACKED[name] = packed
    try:
        spark.addArtifacts(packed, file=True)
    except Exception as exc:
        # this session holds the name already: the same model (its digest), maybe packed by an
        # older lakeinfer; the worker checks what it unpacks against the digest either way
        if not any(code in str(exc) for code in ("ARTIFACT_ALREADY_EXISTS", "DUPLICATED_ARTIFACT")):
            raise
    return name


def artifact_bytes(name: str) -> bytes:
    """In a Python worker: the bytes of the session artifact ``name``."""
    from pyspark import SparkFiles

    with open(SparkFiles.get(name), "rb") as fh:
        return fh.read()


def model_on_disk(digest: str, name: str, is_dir: bool, data: Callable[[], bytes],
                  root: str | None = None) -> str:
    """The packed model on this machine: one folder per model, shared by its worker processes.

    It is written once, into a staging folder renamed into place, after its bytes are checked
    against the digest; a record beside it (the digest, each shipped file's size and time) lets
    the next worker reuse it without reading it all again, and tells a copy altered since (or a
    shipped file gone) from one that a load only added files to (``__pycache__`` under an MLflow
    model's code). An altered copy is moved aside, never deleted while a worker may be reading it,
    and a fresh one placed. Workers take turns (a lock file) to check, place and prune. Processes
    and jobs reuse the copy: the disk holds one per model, and a folder no job has used for a week
    goes when the next model is written. The root must be this user's own folder, closed to others
    (a model is code to load). ``data`` is called only when the folder has to be written.
    """
    root = root or os.path.join(tempfile.gettempdir(), f"lakeinfer-models-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise errors.ModelLoadError(f"{root} is not a folder of this user's own, closed to others: the model "
                                    "is not placed there (remove it, or set TMPDIR to another folder)")
    # the name too: the flavor may follow it, and a file's digest does not include its name
    final = os.path.join(root, f"{digest}-{hashlib.sha256(name.encode()).hexdigest()[:8]}")
    local = os.path.join(final, name)
    with open(os.path.join(root, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _as_placed(final, local, digest):
            os.utime(final)  # in use: not pruned
            return local
        if os.path.exists(final):  # altered since: aside (a worker may still read it), pruned in a week
            aside = f"{final}.aside-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(final, aside)
            os.utime(aside)
        staging = tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root)
        try:
            staged = os.path.join(staging, name)
            if is_dir:
                with zipfile.ZipFile(io.BytesIO(data())) as archive:
                    archive.extractall(staged)
            else:
                with open(staged, "wb") as fh:
                    fh.write(data())
            if model_digest(staged) != digest:
                raise errors.ModelLoadError(f"the model {name} shipped to a worker does not match its digest "
                                            f"{digest[:12]}")
            with open(os.path.join(staging, PLACED), "w") as fh:
                json.dump({"digest": digest, "files": _files(staged)}, fh)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _prune(root, keep=final)
        return local


def _files(local: str) -> list[list[object]]:
    """Each file of a placed model: its path in the model, size and modification time."""
    paths = [local] if os.path.isfile(local) else sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(local) for name in names)
    return [[os.path.relpath(path, local), info.st_size, info.st_mtime_ns]
            for path, info in ((path, os.stat(path)) for path in paths)]


def _as_placed(final: str, local: str, digest: str) -> bool:
    """Whether the copy holds every shipped file as it was placed (files a load added aside)."""
    try:
        with open(os.path.join(final, PLACED)) as fh:
            record = json.load(fh)
        if record["digest"] != digest:
            return False
        for rel, size, mtime in record["files"]:
            now = os.stat(os.path.normpath(os.path.join(local, rel)))
            if (now.st_size, now.st_mtime_ns) != (size, mtime):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _prune(root: str, keep: str) -> None:
    cutoff = time.time() - UNUSED_FOR_S
    for entry in os.scandir(root):
        try:
            unused = entry.path != keep and entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff
        except OSError:
            continue
        if unused:
            shutil.rmtree(entry.path, ignore_errors=True)
