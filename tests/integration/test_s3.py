"""Input from and output to s3:// through a real S3 protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import Trained, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield env
    finally:
        server.stop()


def test_s3_in_and_out(s3_env: dict[str, str], onnx_model: Trained, datasets: dict[str, Path]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="lake")
    for path in sorted(datasets["parquet"].iterdir()):
        client.upload_file(str(path), "lake", f"events/{path.name}")
    result = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", "s3://lake/events/",
                     "--output", "s3://lake/scored/", "--keep", "id", "--workers", "2", env=s3_env)
    assert result.returncode == 0, result.stderr
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="scored/")["Contents"])
    assert "scored/_SUCCESS" in keys
    assert not [k for k in keys if "/.tmp-" in k]
    parts = [k for k in keys if k.startswith("scored/part-")]
    assert len(parts) == 3
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="test", secret_key="test",
                           region="us-east-1")
    table = pq.read_table([f"lake/{k}" for k in parts], filesystem=fs).sort_by("id")
    assert table.column("id").to_pylist() == list(range(900))
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), onnx_model.labels)

    glob = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", "s3://lake/events/data-1*",
                   "--output", "s3://lake/one/", "--keep", "id", "--workers", "1", env=s3_env)
    assert glob.returncode == 0, glob.stderr
    assert "scored 300 rows" in glob.stdout
