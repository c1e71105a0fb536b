"""lakeinfer serve over real HTTP on 127.0.0.1: real clients, batching, every error path, drain."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FEATURES, Trained, read_output, run_cli
from tests.serving import column_tensors, serving
from tests.slow_model import SlowEcho


@pytest.fixture(scope="module")
def onnx_server(onnx_model: Trained):  # type: ignore[no-untyped-def]
    with serving("--model", onnx_model.path, *onnx_model.cli, "--name", "rf") as server:
        yield server


@pytest.fixture()
def echo_model(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(delay: float, load_delay: float = 0.0) -> Path:
        path = tmp_path / f"echo-{delay}-{load_delay}.joblib"
        joblib.dump(SlowEcho(len(FEATURES), delay, load_delay), path)
        return path

    return make


def _echo_args(path: Path, *extra: object) -> list[object]:
    # one worker unless told (a joblib model's default is one per core): these tests count on one queue
    return ["--model", path, "--trust-model", "--features", ",".join(FEATURES), "--name", "echo", "--workers", "1",
            *extra]


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus exposition, as (name, labels, value)."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _workers_seen(url: str, *, want: int, tries: int = 400) -> set[str]:
    """The worker pids answering GETs of ``url``, each over a new connection, until ``want`` of them."""
    pids: set[str] = set()
    for _ in range(tries):
        answer = httpx.get(url)
        assert answer.status_code == 200, answer.text
        pids.add(answer.headers["x-lakeinfer-worker"])
        if len(pids) >= want:
            break
    return pids


def test_tritonclient_speaks_v2(onnx_server, onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{onnx_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("rf")
    meta = client.get_model_metadata("rf")
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    assert [o["name"] for o in meta["outputs"]] == ["prediction", "probability"]
    rows = X.to_numpy(np.float32)[:50]
    for binary in (True, False):
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [triton.InferRequestedOutput("prediction", binary_data=binary),
                   triton.InferRequestedOutput("probability", binary_data=binary)]
        result = client.infer("rf", [tensor], outputs=outputs, request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("prediction"), onnx_model.labels[:50])
        np.testing.assert_allclose(result.as_numpy("probability"), onnx_model.probability[:50], atol=1e-6)
    # one tensor per column works too
    columns = column_tensors(triton, rows, FEATURES)
    result = client.infer("rf", columns)
    np.testing.assert_array_equal(result.as_numpy("prediction"), onnx_model.labels[:50])


def test_records_endpoint_equals_batch(onnx_server, onnx_model: Trained, frame, datasets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    instances = frame[FEATURES].iloc[:40].to_dict(orient="records")
    response = httpx.post(f"{onnx_server.url}/v1/models/rf/predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
                   "--output", tmp_path / "out", "--keep", "id").returncode == 0
    batch = read_output(tmp_path / "out").iloc[:40]
    assert [p["prediction"] for p in served] == batch["prediction"].tolist()
    np.testing.assert_allclose([p["probability"] for p in served], np.stack(batch["probability"]), atol=1e-12)


def test_concurrent_callers_get_their_own_rows(echo_model) -> None:  # type: ignore[no-untyped-def]
    with serving(*_echo_args(echo_model(0.02), "--max-batch-size", "64", "--max-wait-ms", "5")) as server:
        def call(client_id: int) -> None:
            with httpx.Client(timeout=30) as http:
                for k in range(5):
                    rows = [{f: float(client_id * 1000 + k * 10 + r) if f == "f0" else 0.0 for f in FEATURES}
                            for r in range(1 + client_id % 4)]
                    body = http.post(f"{server.url}/v1/models/echo/predict", json={"instances": rows})
                    assert body.status_code == 200, body.text
                    got = [p["prediction"] for p in body.json()["predictions"]]
                    assert got == [row["f0"] * 10 for row in rows]

        with ThreadPoolExecutor(24) as pool:
            list(pool.map(call, range(24)))
        metrics = _samples(httpx.get(f"{server.url}/metrics").text)
    alone = sum(v for name, labels, v in metrics if name == "lakeinfer_batch_requests_bucket" and labels["le"] == "1.0")
    calls = sum(v for name, _, v in metrics if name == "lakeinfer_batch_requests_count")
    assert calls > 0
    assert alone < calls, "no model call merged two requests"


def test_bad_requests_get_400_naming_the_field(onnx_server) -> None:  # type: ignore[no-untyped-def]
    url = f"{onnx_server.url}/v2/models/rf/infer"
    cases = [
        (b"{not json", "not valid JSON"),
        (b'{"outputs": []}', "missing field 'inputs'"),
        (b'{"inputs": [{"name": "f0", "shape": [2], "datatype": "FP32"}]}', "input 'f0': missing field 'data'"),
        (b'{"inputs": [{"name": "x", "shape": [2, 5], "datatype": "FP32", "data": [1, 2, 3]}]}',
         "shape [2, 5] needs 10 values, got 3"),
        (b'{"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP99", "data": [1, 2, 3, 4, 5]}]}',
         "unknown datatype 'FP99'"),
        (b'{"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": ["a", "b", "c", "d", "e"]}]}',
         "do not match datatype FP32"),
        (b'{"inputs": [{"name": "f0", "shape": [1], "datatype": "FP32", "data": [1]}]}', "missing feature column 'f1'"),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
         "missing feature column 'f0'"),
        (b'{"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}],'
         b' "outputs": [{"name": "margin"}]}', "output 'margin' is not one of the model's outputs"),
    ]
    for body, phrase in cases:
        response = httpx.post(url, content=body)
        assert response.status_code == 400, (body, response.text)
        assert phrase in response.json()["error"], (body, response.json())
    records = httpx.post(f"{onnx_server.url}/v1/models/rf/predict",
                         json={"instances": [{f: 1.0 for f in FEATURES}, {"f0": "x", **{f: 1.0 for f in FEATURES[1:]}}]})
    assert records.status_code == 400 and "field 'f0'" in records.json()["error"]
    missing = httpx.post(f"{onnx_server.url}/v1/models/rf/predict", json={"instances": [{"f0": 1.0}]})
    # a field missing from a record is a null, judged by the missing-value rule
    assert missing.status_code == 400 and missing.json()["error"] == "instances[0]: feature column 'f1' is null"
    unknown = httpx.post(f"{onnx_server.url}/v2/models/other/infer", content=b"{}")
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]


def test_a_bad_request_does_not_fail_its_batch_neighbours(echo_model) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    with serving(*_echo_args(echo_model(0.05))) as server:
        good = {"instances": [{f: 1.0 for f in FEATURES}]}
        # same columns and types as the good requests, so it is merged with them into one model call
        bad = {"instances": [{f: 1.0 for f in FEATURES}, {f: (None if f == "f3" else 1.0) for f in FEATURES}]}
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(httpx.post, f"{server.url}/v1/models/echo/predict", json=bad if i % 4 == 0 else good,
                                   timeout=30) for i in range(16)]
            answers = [f.result() for f in futures]
        text = httpx.get(f"{server.url}/metrics").text
    merged = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name.startswith("lakeinfer_batch_requests")}
    assert merged["lakeinfer_batch_requests_sum"] > merged["lakeinfer_batch_requests_count"]  # some calls merged
    for i, answer in enumerate(answers):
        if i % 4 == 0:
            assert answer.status_code == 400 and answer.json()["error"] == "instances[1]: feature column 'f3' is null"
        else:
            assert answer.status_code == 200 and answer.json()["predictions"] == [{"prediction": 10.0}]


def test_limits_413_503_504(echo_model) -> None:  # type: ignore[no-untyped-def]
    args = _echo_args(echo_model(0.4), "--max-body-bytes", "2000", "--max-queue", "2", "--timeout-ms", "1500",
                      "--max-batch-size", "1")
    with serving(*args) as server:
        url = f"{server.url}/v1/models/echo/predict"
        row = {f: 1.0 for f in FEATURES}
        big = httpx.post(url, json={"instances": [row] * 100})
        assert big.status_code == 413 and "limit" in big.json()["error"]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: httpx.post(url, json={"instances": [row]}, timeout=30), range(12)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "waiting" in busy.json()["error"]
        assert set(codes) <= {200, 503, 504}
        # a request that waits behind others past its timeout gets 504, not a hang
        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            slow = list(pool.map(lambda _: httpx.post(url, json={"instances": [row]}, timeout=30), range(3)))
        timed = [a for a in slow if a.status_code == 504]
        assert timed or all(a.status_code == 200 for a in slow)
        for a in timed:
            assert "timeout" in a.json()["error"]
        assert time.monotonic() - started < 5


def test_timeout_bounds_the_wait(echo_model) -> None:  # type: ignore[no-untyped-def]
    with serving(*_echo_args(echo_model(2.0), "--timeout-ms", "300")) as server:
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/v1/models/echo/predict", json={"instances": [{f: 1.0 for f in FEATURES}]},
                            timeout=30)
        assert answer.status_code == 504 and "300 ms timeout" in answer.json()["error"]
        assert time.monotonic() - started < 1.5


def test_api_key(onnx_model: Trained) -> None:
    with serving("--model", onnx_model.path, *onnx_model.cli, "--name", "rf", "--api-key-env", "TEST_KEY",
                 env={"TEST_KEY": "s3cret"}) as server:
        body = {"instances": [{f: 1.0 for f in FEATURES}]}
        denied = httpx.post(f"{server.url}/v1/models/rf/predict", json=body)
        assert denied.status_code == 401 and "API key" in denied.json()["error"]
        wrong = httpx.post(f"{server.url}/v1/models/rf/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.post(f"{server.url}/v1/models/rf/predict", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # probes need no key


def test_ready_only_when_every_worker_loaded(echo_model) -> None:  # type: ignore[no-untyped-def]
    with serving(*_echo_args(echo_model(0.0, load_delay=3.0), "--workers", "2"), ready=False) as server:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        answer = httpx.post(f"{server.url}/v1/models/echo/predict", json={"instances": [{f: 1.0 for f in FEATURES}]})
        assert answer.status_code == 503 and "loading" in answer.json()["error"]
        server.wait("/v2/health/ready", timeout=60)
        pids = _workers_seen(server.url + "/v2/health/ready", want=2)
        assert len(pids) == 2, pids  # each answered ready: each has its model loaded


def test_sigterm_drains_requests_in_flight(echo_model) -> None:  # type: ignore[no-untyped-def]
    with serving(*_echo_args(echo_model(1.0))) as server:
        answers: list[httpx.Response] = []

        def call() -> None:
            answers.append(httpx.post(f"{server.url}/v1/models/echo/predict",
                                      json={"instances": [{f: 2.0 for f in FEATURES}]}, timeout=30))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        code = server.stop()
        for t in threads:
            t.join()
    assert code == 0
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["predictions"] == [{"prediction": 20.0}] for a in answers)


def test_schemathesis_finds_no_server_error(onnx_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    result = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{onnx_server.url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "40", "--phases", "examples,coverage,fuzzing",
         "--suppress-health-check", "all", "--workers", "1", "--seed", "1"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_one_worker_loads_the_model_once(tmp_path: Path) -> None:
    from tests.slow_model import CountedEcho

    log = tmp_path / "loads.txt"
    path = tmp_path / "counted.joblib"
    joblib.dump(CountedEcho(len(FEATURES), str(log)), path)
    with serving(*_echo_args(path)) as server:
        answer = httpx.post(f"{server.url}/v1/models/echo/predict", json={"instances": [{f: 2.0 for f in FEATURES}]})
        assert answer.json() == {"predictions": [{"prediction": 20.0}]}
    assert log.read_text().splitlines() == ["loaded"]  # the start-up check's model is the one served


def test_serve_from_a_job_spec(onnx_model: Trained, X, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.toml"
    spec.write_text(f'[model]\npath = "{onnx_model.path}"\nfeatures = {FEATURES!r}\n\n'
                    '[[pipeline.steps]]\nop = "model"\n\n'
                    '[[pipeline.steps]]\nop = "label_map"\nlabels = ["low", "mid", "high"]\n\n'
                    '[serve]\nname = "tiers"\nmax_batch_size = 32\n'.replace("'", '"'))
    with serving("--spec", spec) as server:
        rows = X.iloc[:20].to_dict(orient="records")
        answer = httpx.post(f"{server.url}/v1/models/tiers/predict", json={"instances": rows})
        assert answer.status_code == 200, answer.text
        tiers = np.array(["low", "mid", "high"])[onnx_model.labels[:20]]
        assert [p["prediction"] for p in answer.json()["predictions"]] == tiers.tolist()
        meta = httpx.get(f"{server.url}/v2/models/tiers").json()
        assert {"name": "prediction", "datatype": "BYTES", "shape": [-1]} in meta["outputs"]


def test_serve_with_a_model_that_does_not_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"nope")
    result = run_cli("serve", "--model", broken, "--features", "f0", "--port", "1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot load ONNX model" in result.stderr


def test_one_scrape_totals_every_worker(onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    rows = X.to_numpy(np.float64)[:3]
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    with serving("--model", onnx_model.path, *onnx_model.cli, "--name", "rf", "--workers", "2") as server:
        def call(_: int) -> str:
            answer = httpx.post(f"{server.url}/v2/models/rf/infer", json=body, timeout=30)  # a new connection each
            assert answer.status_code == 200, answer.text
            return answer.headers["x-lakeinfer-worker"]

        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(call, range(200)))
        # both workers answered some, so a scrape of either one alone would count fewer than 200
        assert len(set(served)) == 2, f"one worker took every request: {set(served)}"
        samples = _samples(httpx.get(f"{server.url}/metrics").text)
    infer = {labels["code"]: v for name, labels, v in samples
             if name == "lakeinfer_requests_total" and labels["endpoint"] == "infer"}
    assert infer == {"200": 200}
    latency = [v for name, labels, v in samples if name == "lakeinfer_request_seconds_count"
               and labels["endpoint"] == "infer"]
    assert latency == [200]
    assert sum(v for name, _, v in samples if name == "lakeinfer_batch_rows_sum") == 600
    assert [v for name, _, v in samples if name == "lakeinfer_queue_depth"] == [0]


def test_serve_on_a_busy_port_is_one_line(onnx_model: Trained) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--model", onnx_model.path, *onnx_model.cli, "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lakeinfer: error: port {port} on 127.0.0.1 is in use"), lines


def test_non_finite_values_are_400_naming_the_row(onnx_server) -> None:  # type: ignore[no-untyped-def]
    # JSON's NaN and Infinity tokens: once a 500 with a traceback, and a 200 with a probability
    for token, word in (("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("null", "null")):
        rows = [[0.5] * 5, [0.5, 0.5, token, 0.5, 0.5]]
        records = "[" + ", ".join("{" + ", ".join(f'"f{j}": {v}' for j, v in enumerate(r)) + "}" for r in rows) + "]"
        answer = httpx.post(f"{onnx_server.url}/v1/models/rf/predict", content=f'{{"instances": {records}}}')
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == f"instances[1]: feature column 'f2' is {word}"
        if token == "null":
            continue  # a v2 tensor holds no null
        data = ", ".join(str(v) for r in rows for v in r)
        body = f'{{"inputs": [{{"name": "x", "shape": [2, 5], "datatype": "FP64", "data": [{data}]}}]}}'
        answer = httpx.post(f"{onnx_server.url}/v2/models/rf/infer", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == f"row 1: feature column 'f2' is {word}"


def test_a_model_that_names_no_features_is_served_by_its_input_tensor(onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as triton

    # skl2onnx names the graph's one [N, 5] input X and no features: served without --features
    with serving("--model", onnx_model.path, "--name", "rf") as server:
        start = server.proc.stderr.readline().decode()  # type: ignore[union-attr]
        assert start == f"serving rf (onnx) on http://127.0.0.1:{server.port}, 1 worker\n"  # ONNX: one process
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        meta = client.get_model_metadata("rf")
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 5]}]
        rows = X.to_numpy(np.float32)[:60]
        for binary in (True, False):
            tensor = triton.InferInput("X", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            result = client.infer("rf", [tensor])
            np.testing.assert_array_equal(result.as_numpy("prediction"), onnx_model.labels[:60])
            np.testing.assert_allclose(result.as_numpy("probability"), onnx_model.probability[:60], atol=1e-6)
        # the records endpoint needs column names
        records = httpx.post(f"{server.url}/v1/models/rf/predict", json={"instances": [{"f0": 1.0}]})
        assert records.status_code == 400
        assert records.json()["error"] == ("this model names no features: start the server with --features "
                                           "to use the records endpoint")
        # the missing-value rule: a NaN in the tensor is a 400 naming the row
        data = ", ".join(["0.5"] * 5 + ["0.5", "0.5", "NaN", "0.5", "0.5"])
        nan = httpx.post(f"{server.url}/v2/models/rf/infer",
                         content=f'{{"inputs": [{{"name": "X", "shape": [2, 5], "datatype": "FP32", "data": [{data}]}}]}}')
        assert nan.status_code == 400 and nan.json()["error"].startswith("row 1: "), nan.text
        wrong = httpx.post(f"{server.url}/v2/models/rf/infer", json={"inputs": [
            {"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert wrong.status_code == 400 and "does not fit the model's [-1, 5]" in wrong.json()["error"]
        server.stop()
        assert server.proc.stdout.read() == b""  # type: ignore[union-attr]  # no access log unless asked


def test_workers_follow_the_flavor_and_access_log(sklearn_model: Trained) -> None:
    import os

    # scikit-learn holds the GIL: one process per core, as batch chooses
    with serving("--model", sklearn_model.path, *sklearn_model.cli, "--name", "rf", "--access-log") as server:
        start = server.proc.stderr.readline().decode()  # type: ignore[union-attr]
        cores = os.cpu_count() or 1
        assert start == f"serving rf (sklearn) on http://127.0.0.1:{server.port}, {cores} worker{'s' * (cores != 1)}\n"
        assert httpx.get(f"{server.url}/v2/models/rf").status_code == 200
        server.stop()
        log = server.proc.stdout.read().decode()  # type: ignore[union-attr]
    assert '"GET /v2/models/rf HTTP/1.1" 200' in log, log
