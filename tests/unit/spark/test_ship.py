"""The model shipped to Spark workers: one folder per model per machine, checked against its digest."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from lakeinfer import errors
from lakeinfer.models import model_digest
from lakeinfer.spark import ship
from lakeinfer.spark.ship import UNUSED_FOR_S, model_on_disk, pack


def entries(root: Path | str) -> list[str]:
    """What the root holds besides the lock file its workers take turns with."""
    return sorted(set(os.listdir(root)) - {".lock"})


class Source:
    """The packed bytes, counting how often a worker had to fetch them."""

    def __init__(self, path: Path) -> None:
        self.bytes = pack(str(path))
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.bytes


def test_a_file_is_placed_once_and_reused(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(4096))
    digest, source, root = model_digest(model), Source(model), tmp_path / "root"
    first = model_on_disk(digest, "model.onnx", False, source, root=str(root))
    second = model_on_disk(digest, "model.onnx", False, source, root=str(root))
    assert first == second and Path(first).read_bytes() == model.read_bytes()
    assert source.calls == 1
    assert len(entries(root)) == 1  # no staging folder left behind


def test_a_folder_round_trips(tmp_path: Path) -> None:
    model = tmp_path / "mlflow_model"
    (model / "data").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "data" / "weights.bin").write_bytes(os.urandom(1000))
    placed = model_on_disk(model_digest(model), "mlflow_model", True, Source(model), root=str(tmp_path / "root"))
    assert model_digest(placed) == model_digest(model)
    assert (Path(placed) / "data" / "weights.bin").read_bytes() == (model / "data" / "weights.bin").read_bytes()


def test_an_altered_copy_is_replaced_not_loaded(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the true model" * 100)
    digest, source, root = model_digest(model), Source(model), str(tmp_path / "root")
    placed = Path(model_on_disk(digest, "model.onnx", False, source, root=root))
    placed.write_bytes(b"half written")
    again = Path(model_on_disk(digest, "model.onnx", False, source, root=root))
    assert again == placed and again.read_bytes() == model.read_bytes() and source.calls == 2
    # the altered copy was moved aside, not deleted under a worker that may read it; pruned in a week
    [aside] = [name for name in entries(root) if ".aside-" in name]
    assert (Path(root) / aside / "model.onnx").read_bytes() == b"half written"


def test_files_a_load_adds_are_no_alteration_and_reuse_reads_nothing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "mlflow_model"
    (model / "code").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "code" / "helpers.py").write_text("X = 1\n")
    digest, source, root = model_digest(model), Source(model), str(tmp_path / "root")
    placed = Path(model_on_disk(digest, "mlflow_model", True, source, root=root))
    (placed / "code" / "__pycache__").mkdir()
    (placed / "code" / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"bytecode")  # what importing writes
    hashed: list[str] = []
    monkeypatch.setattr(ship, "model_digest", lambda path: hashed.append(path) or model_digest(path))
    assert Path(model_on_disk(digest, "mlflow_model", True, source, root=root)) == placed
    assert source.calls == 1 and hashed == []  # reused from its record: not fetched, not hashed again
    (placed / "code" / "helpers.py").unlink()  # a shipped file gone: placed anew
    assert Path(model_on_disk(digest, "mlflow_model", True, source, root=root)) == placed
    assert source.calls == 2 and (placed / "code" / "helpers.py").read_text() == "X = 1\n"


def test_bytes_that_do_not_match_the_digest_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the true model")
    root = tmp_path / "root"
    with pytest.raises(errors.ModelLoadError, match="model.onnx .* does not match its digest"):
        model_on_disk(model_digest(model), "model.onnx", False, lambda: b"other bytes", root=str(root))
    assert entries(root) == []


def test_one_file_under_two_names_gets_two_folders(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"same bytes")
    root = str(tmp_path / "root")
    a = model_on_disk(model_digest(model), "a.onnx", False, Source(model), root=root)
    b = model_on_disk(model_digest(model), "b.onnx", False, Source(model), root=root)
    assert Path(a).name == "a.onnx" and Path(b).name == "b.onnx" and Path(a).parent != Path(b).parent


def test_workers_placing_at_once_share_one_copy(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(1 << 20))
    digest, root = model_digest(model), str(tmp_path / "root")
    start, placed, failures = threading.Barrier(8), [], []

    def worker() -> None:
        start.wait()
        try:
            placed.append(model_on_disk(digest, "model.onnx", False, Source(model), root=root))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(set(placed)) == 1 and len(placed) == 8
    assert len(entries(root)) == 1 and model_digest(placed[0]) == digest


def test_a_model_no_job_used_for_a_week_goes_when_another_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old, recent = tmp_path / "old.onnx", tmp_path / "recent.onnx"
    old.write_bytes(b"old model")
    recent.write_bytes(b"recent model")
    old_folder = Path(model_on_disk(model_digest(old), "old.onnx", False, Source(old), root=str(root))).parent
    recent_folder = Path(model_on_disk(model_digest(recent), "recent.onnx", False, Source(recent), root=str(root))).parent
    week_ago = time.time() - UNUSED_FOR_S - 60
    for folder in (old_folder, recent_folder):
        os.utime(folder, (week_ago, week_ago))
    # one is used again (which touches it); then a new model is written, which prunes
    model_on_disk(model_digest(recent), "recent.onnx", False, Source(recent), root=str(root))
    new = tmp_path / "new.onnx"
    new.write_bytes(b"new model")
    model_on_disk(model_digest(new), "new.onnx", False, Source(new), root=str(root))
    assert not old_folder.exists() and recent_folder.exists()
    assert len(entries(root)) == 2


@pytest.mark.parametrize("how", ["open to others", "a link to another folder"])
def test_a_root_that_is_not_this_users_own_is_refused(how: str, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    root = tmp_path / "root"
    if how == "open to others":
        root.mkdir()
        root.chmod(0o777)
    else:
        (tmp_path / "theirs").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "theirs")
    with pytest.raises(errors.ModelLoadError, match="not a folder of this user's own, closed to others"):
        model_on_disk(model_digest(model), "model.onnx", False, Source(model), root=str(root))
    assert not list((tmp_path / "theirs").iterdir()) if how != "open to others" else entries(root) == []
