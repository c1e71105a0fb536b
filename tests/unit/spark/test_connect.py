"""Spark Connect without a server: the address, the job's session id, the model's artifact and the
records' schema a stream reads."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import pytest

from lakeinfer.errors import ConfigError
from lakeinfer.spark.session import _reachable, _with_session, connect_remote
from lakeinfer.spark.ship import artifact_name, pack
from lakeinfer.stream.spark import _json_schema
from tests.serving import free_port


def test_remote_from_the_option_or_spark_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARK_REMOTE", "sc://env:15002")
    assert connect_remote(None, "sc://given:1") == "sc://given:1"
    assert connect_remote(None, None) == "sc://env:15002"
    assert connect_remote("local[2]", None) is None  # a master chooses a classic session
    with pytest.raises(ConfigError, match="not both"):
        connect_remote("local[2]", "sc://given:1")
    monkeypatch.delenv("SPARK_REMOTE")
    assert connect_remote(None, None) is None


def test_a_jobs_session_id_is_its_own_and_stable() -> None:
    one = _with_session("sc://h:15002", "job-1")
    assert one == _with_session("sc://h:15002/", "job-1") != _with_session("sc://h:15002", "job-2")
    assert uuid.UUID(one.split("session_id=")[1])
    with_token = _with_session("sc://h:443/;token=abc", "job-1")
    assert with_token.startswith("sc://h:443/;token=abc;session_id=")
    assert _with_session("sc://h:1/;session_id=mine", "job-1") == "sc://h:1/;session_id=mine"


def test_an_address_nobody_answers_is_one_line() -> None:
    with pytest.raises(ConfigError, match="no Spark Connect server answers at"):
        _reachable(f"sc://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="sc://HOST:PORT"):
        _reachable("http://127.0.0.1:1")


def test_a_model_packs_to_the_same_bytes_under_a_name_of_its_digest(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.bin").write_bytes(b"b")
    (folder / "sub" / "a.txt").write_text("a")
    first = pack(str(folder))
    (folder / "b.bin").touch()  # a newer time, the same bytes
    assert pack(str(folder)) == first
    assert zipfile.ZipFile(io.BytesIO(first)).namelist() == ["b.bin", "sub/a.txt"]
    assert artifact_name("ab" * 32, "model", True) == f"lakeinfer-{'ab' * 16}-model.zip"
    assert artifact_name("ab" * 32, "rf.joblib", False) == f"lakeinfer-{'ab' * 16}-rf.joblib"


def test_records_schema_without_an_rdd() -> None:
    schema = _json_schema(['{"id": 1, "f0": 0.5, "name": "a"}', "not json", None, '{"id": 2, "f0": 1, "extra": null}'])
    kinds = {f.name: f.dataType.simpleString() for f in schema.fields}
    assert kinds == {"id": "bigint", "f0": "double", "name": "string", "extra": "string"}
