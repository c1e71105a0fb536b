"""Flavor detection from a model's name, its bytes and, for directories, its layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from lakeinfer.errors import ModelLoadError
from lakeinfer.models import FLAVORS, detect_flavor

SUFFIXES = {
    ".onnx": "onnx", ".skops": "skops", ".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn",
    ".ubj": "xgboost", ".pt2": "torch_export", ".pt": "torchscript", ".pth": "torchscript", ".lgb": "lightgbm",
    ".ONNX": "onnx",
}


@pytest.mark.parametrize(("suffix", "flavor"), SUFFIXES.items())
def test_suffix_decides_without_reading(tmp_path: Path, suffix: str, flavor: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not read at all")
    assert detect_flavor(str(path)) == flavor


def _zip(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return path


@pytest.mark.parametrize(("names", "flavor"), [
    (("net/archive_format", "net/data.pkl"), "torch_export"),
    (("net/models/net.json",), "torch_export"),
    (("net/constants.pkl", "net/code/x.py"), "torchscript"),
    (("net/data.pkl",), "torchscript"),
    (("schema.json", "a.npy"), "skops"),
])
def test_zip_archives_by_their_members(tmp_path: Path, names: tuple[str, ...], flavor: str) -> None:
    assert detect_flavor(str(_zip(tmp_path / "model.bin", *names))) == flavor


@pytest.mark.parametrize(("content", "flavor"), [
    (b'{"learner": {"attributes": {}}, "version": [2, 1, 0]}', "xgboost"),
    (b'  \n{"version": [2, 1, 0], "learner": {}}', "xgboost"),
    (b"tree\nversion=v4\nnum_class=1\n", "lightgbm"),
    (b"tree\r\nversion=v4\r\n", "lightgbm"),
    (b"header\nversion=v3\n", "lightgbm"),
])
def test_bytes_decide_for_an_unknown_suffix(tmp_path: Path, content: bytes, flavor: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    assert detect_flavor(str(path)) == flavor


@pytest.mark.parametrize(("name", "flavor"), [
    ("model.json", "xgboost"), ("model.txt", "lightgbm"), ("model.model", "lightgbm")])
def test_ambiguous_suffixes_fall_back_by_name(tmp_path: Path, name: str, flavor: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"nothing recognisable")
    assert detect_flavor(str(path)) == flavor


def test_lightgbm_text_named_json_is_lightgbm(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(b"tree\nversion=v4\n")
    assert detect_flavor(str(path)) == "lightgbm"


def test_mlflow_directory(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    assert detect_flavor(str(tmp_path)) == "mlflow"


def test_spark_pipeline_model_directory(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "stages").mkdir()
    assert detect_flavor(str(tmp_path)) == "spark"


def test_other_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    with pytest.raises(ModelLoadError) as caught:
        detect_flavor(str(tmp_path))
    assert str(caught.value) == (f"{tmp_path} is a directory but neither an MLflow model (no MLmodel file) "
                                 "nor a Spark ML PipelineModel")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        detect_flavor(str(tmp_path / "absent.bin"))
    assert str(caught.value) == f"model file {tmp_path}/absent.bin does not exist"


@pytest.mark.parametrize("kind", ["binary", "zip of something else"])
def test_unknown_names_the_flavor_option(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.bin"
    if kind == "binary":
        path.write_bytes(b"\x00\x01\x02 binary")
    else:
        _zip(path, "weights/other.bin")
    with pytest.raises(ModelLoadError) as caught:
        detect_flavor(str(path))
    assert str(caught.value) == (
        f"cannot tell the flavor of {path}; name it with --flavor ({', '.join(sorted(FLAVORS))})")
    assert "onnx, sklearn, skops, spark" in str(caught.value)
