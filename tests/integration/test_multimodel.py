"""Several models in one ``lakeinfer serve``: routing by name over REST and gRPC, no cross-talk,
per-model readiness and queues, the repository index, and the options that would be ambiguous."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from tests.conftest import FEATURES, Trained, run_cli
from tests.serving import free_port, serving
from tests.slow_model import SlowEcho

triton = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


def _spec(folder: Path, text: str) -> Path:
    path = folder / "serve.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def two_models(onnx_model: Trained, xgboost_model: Trained, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An ONNX random forest (rf) and an XGBoost classifier (xgb), listed in a spec, REST and gRPC."""
    spec = _spec(tmp_path_factory.mktemp("multi"), f"""
[serve]
max_wait_ms = 1.0

[[serve.models]]
name = "rf"
path = "{onnx_model.path}"
features = {FEATURES!r}

[[serve.models]]
name = "xgb"
path = "{xgboost_model.path}"
max_batch_size = 64
""".replace("'", '"'))
    port = free_port()
    with serving("--spec", spec, "--grpc-port", port) as server:
        server.grpc_port = port  # type: ignore[attr-defined]
        yield server


def _rest_infer(http: httpx.Client, url: str, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    answer = http.post(f"{url}/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["model_name"] == name
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in payload["outputs"]}


def _grpc_infer(client: triton.InferenceServerClient, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer(name, [tensor])
    assert result.get_response().model_name == name
    return {o: result.as_numpy(o) for o in ("prediction", "probability")}


def test_start_line_lists_the_models(two_models) -> None:  # type: ignore[no-untyped-def]
    start = two_models.proc.stderr.readline().decode()
    assert start == (f"serving rf (onnx), xgb (xgboost) on http://127.0.0.1:{two_models.port}, "
                     f"gRPC {two_models.grpc_port}, 1 worker\n")


def test_concurrent_callers_of_both_models_get_their_own_models_answers(  # type: ignore[no-untyped-def]
        two_models, onnx_model: Trained, xgboost_model: Trained, X) -> None:
    data = X.to_numpy(np.float32)
    trained = {"rf": onnx_model, "xgb": xgboost_model}
    # the two models disagree on some rows: an answer from the wrong model would show
    assert (onnx_model.labels != xgboost_model.labels).any()

    def caller(k: int) -> int:
        checked = 0
        with httpx.Client(timeout=30) as http:
            client = triton.InferenceServerClient(url=f"127.0.0.1:{two_models.grpc_port}")
            for j in range(8):
                name = ("rf", "xgb")[(k + j) % 2]
                start = (k * 37 + j * 11) % (len(data) - 20)
                size = 1 + (k + j) % 20
                rows = data[start:start + size]
                got = (_grpc_infer(client, name, rows) if (k // 2 + j) % 2 else
                       _rest_infer(http, two_models.url, name, rows))
                model = trained[name]
                np.testing.assert_array_equal(got["prediction"], model.labels[start:start + size], err_msg=name)
                np.testing.assert_allclose(got["probability"], model.probability[start:start + size], atol=1e-5,
                                           err_msg=name)
                checked += 1
            client.close()
        return checked

    with ThreadPoolExecutor(24) as pool:
        assert sum(pool.map(caller, range(48))) == 48 * 8
    metrics = httpx.get(f"{two_models.url}/metrics").text
    for name in ("rf", "xgb"):  # per-model series
        assert f'lakeinfer_batch_rows_count{{model="{name}"}}' in metrics
        assert f'endpoint="infer",model="{name}"' in metrics
        assert f'endpoint="grpc_infer",model="{name}"' in metrics


def test_readiness_metadata_and_the_repository_index(two_models) -> None:  # type: ignore[no-untyped-def]
    url = two_models.url
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    for name, platform in (("rf", "lakeinfer_onnx"), ("xgb", "lakeinfer_xgboost")):
        assert httpx.get(f"{url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
        assert httpx.get(f"{url}/v2/models/{name}").json()["platform"] == platform
    index = httpx.post(f"{url}/v2/repository/index")
    assert index.status_code == 200
    assert index.json() == [{"name": "rf", "version": "1", "state": "READY"},
                            {"name": "xgb", "version": "1", "state": "READY"}]
    assert httpx.post(f"{url}/v2/repository/index", json={"ready": True}).json() == index.json()
    assert httpx.post(f"{url}/v2/repository/index", json={"ready": "yes"}).status_code == 400
    client = triton.InferenceServerClient(url=f"127.0.0.1:{two_models.grpc_port}")
    assert client.is_server_ready() and client.is_model_ready("rf") and client.is_model_ready("xgb")
    assert client.get_model_metadata("xgb", as_json=True)["platform"] == "lakeinfer_xgboost"
    assert client.get_model_metadata("rf", as_json=True)["platform"] == "lakeinfer_onnx"


def test_an_unknown_model_is_404_naming_the_models(two_models) -> None:  # type: ignore[no-untyped-def]
    url = two_models.url
    for answer in (httpx.get(f"{url}/v2/models/gbm"), httpx.get(f"{url}/v2/models/gbm/ready"),
                   httpx.post(f"{url}/v2/models/gbm/infer", json={"inputs": []}),
                   httpx.post(f"{url}/v1/models/gbm/predict", json={"instances": []})):
        assert answer.status_code == 404
        assert answer.json()["error"] == "unknown model 'gbm' (this server has 'rf', 'xgb')"
    client = triton.InferenceServerClient(url=f"127.0.0.1:{two_models.grpc_port}")
    tensor = triton.InferInput("input", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), np.float32))
    for call in (lambda: client.infer("gbm", [tensor]), lambda: client.get_model_metadata("gbm"),
                 lambda: client.is_model_ready("gbm")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert caught.value.message() == "unknown model 'gbm' (this server has 'rf', 'xgb')"


def _echo(folder: Path, name: str, delay: float, load_delay: float = 0.0) -> Path:
    path = folder / f"{name}.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay, load_delay), path)
    return path


def test_each_model_is_ready_when_loaded_and_has_its_own_queue(tmp_path: Path) -> None:
    fast, slow = _echo(tmp_path, "fast", 0.0), _echo(tmp_path, "slow", 0.5, load_delay=4.0)
    # both sklearn: --features and --trust-model are unambiguous and apply to both
    # two workers: a server of one serves the models its start-up check loaded, ready from the
    # start, while each worker process loads its own after the server is up, one model after another
    args = ["--model", f"fast={fast}", "--model", f"slow={slow}", "--trust-model", "--features", ",".join(FEATURES),
            "--workers", "2", "--max-queue", "2", "--max-batch-size", "1"]
    row = {"instances": [{f: 1.0 for f in FEATURES}]}
    with serving(*args, ready=False) as server:
        url = server.url
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v2/models/fast/ready").status_code != 200:  # the models load in their order
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{url}/v2/models/slow/ready").json() == {"name": "slow", "ready": False}
        assert httpx.post(f"{url}/v2/repository/index").json() == [
            {"name": "fast", "version": "1", "state": "READY"}, {"name": "slow", "version": "1", "state": "LOADING"}]
        assert httpx.post(f"{url}/v2/repository/index", json={"ready": True}).json() == [
            {"name": "fast", "version": "1", "state": "READY"}]
        loading = httpx.post(f"{url}/v1/models/slow/predict", json=row)
        assert loading.status_code == 503 and loading.json()["error"] == "the model 'slow' is loading"
        assert httpx.post(f"{url}/v1/models/fast/predict", json=row).json() == {"predictions": [{"prediction": 10.0}]}
        server.wait("/v2/health/ready", timeout=60)
        # the slow model's full queue refuses its own callers, not the fast model's
        with ThreadPoolExecutor(10) as pool:
            flood = [pool.submit(httpx.post, f"{url}/v1/models/slow/predict", json=row, timeout=30) for _ in range(8)]
            time.sleep(0.3)
            for _ in range(5):
                assert httpx.post(f"{url}/v1/models/fast/predict", json=row, timeout=5).status_code == 200
            codes = sorted(f.result().status_code for f in flood)
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes


@pytest.mark.parametrize(("extra", "message"), [
    (("--features", ",".join(FEATURES)), "--features for several models of different flavors (onnx, xgboost) is "
                                         "ambiguous: give each model its own in a job spec's [[serve.models]]"),
    (("--flavor", "onnx"), "--flavor onnx does not fit every model (xgb is xgboost): give each model its own in "
                           "a job spec's [[serve.models]]"),
    (("--name", "both"), "--name is for a server of one model; with several, each is named (--model NAME=PATH "
                         "or name in [[serve.models]])"),
])
def test_ambiguous_options_for_several_models_are_one_line_errors(  # type: ignore[no-untyped-def]
        onnx_model: Trained, xgboost_model: Trained, extra, message) -> None:
    done = run_cli("serve", "--model", f"rf={onnx_model.path}", "--model", f"xgb={xgboost_model.path}", *extra,
                   "--port", free_port())
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"lakeinfer: error: {message}"], done.stderr


def test_several_models_need_names_and_the_spec_is_checked(onnx_model: Trained, tmp_path: Path) -> None:
    done = run_cli("serve", "--model", f"rf={onnx_model.path}", "--model", str(onnx_model.path))
    assert done.returncode == 1 and "several models need a name each: --model NAME=PATH" in done.stderr
    for extra, message in (("", "serve.models: two models are named 'a'; each needs a name of its own"),
                           ("queue = 3\n", "serve.models[1]: unknown key 'queue' (did you mean 'max_queue'?)")):
        spec = _spec(tmp_path, f'[[serve.models]]\nname = "a"\npath = "{onnx_model.path}"\n'
                               f'[[serve.models]]\nname = "a"\npath = "{onnx_model.path}"\n{extra}')
        done = run_cli("serve", "--spec", spec)
        assert done.returncode == 1 and done.stderr.endswith(f"serve.toml: {message}\n"), done.stderr
    both = _spec(tmp_path, f'[model]\npath = "{onnx_model.path}"\n'
                           f'[[serve.models]]\nname = "a"\npath = "{onnx_model.path}"\n')
    done = run_cli("serve", "--spec", both)
    assert done.returncode == 1 and "[model] and [pipeline] are for a server of one model" in done.stderr
