"""Serving throughput and latency, side by side in one run, with a real load generator (hey).

Every server serves the same model file, sent the same one-row v2 request ([1, 30] FP32):

  gradient_boosting  a scikit-learn GradientBoostingClassifier (50 trees, 30 features), joblib
  xgboost            an XGBoost booster (50 trees, 30 features, binary:logistic), UBJSON

Servers, each on 127.0.0.1 with 2 worker processes:

  lakeinfer  `lakeinfer serve --workers 2` on the file (adaptive batching on, the defaults)
  lakeinfer-ledger  the same with `--ledger delta:...`: every answer's rows written to the WAL
             before it is sent and shipped to a Delta table every 5 s
  lakeinfer-ledger-fsync  the same with --ledger-fsync (each group of rows fdatasync'd first);
             not in the default list
  mlserver   MLServer's scikit-learn / XGBoost runtime on the file (parallel_workers 2, adaptive
             batching max_batch_size 64, max_batch_time 5 ms); installed into its own venv on first use
  fastapi    a plain FastAPI app under `uvicorn --workers 2` calling the model per request

For concurrency 1, 16 and 64 it prints req/s, p50 and p99, and the ratios of lakeinfer to the
others (and of lakeinfer with its ledger to without: target 0.8x req/s, p99 within 2x at 64
connections); and the model's own time per one-row call, for the latency lakeinfer adds at concurrency 1.
hey rounds each time to 0.1 ms, so the p50 at concurrency 1 is also timed per request to the
microsecond by a plain socket client over one kept-alive connection (its own time included).
Then, per model, overload: lakeinfer with one worker and a queue of 100 under 1,000 connections
(hey, each connection sending again as soon as it is answered), its 200s per second against its
capacity with 64 connections (target: 0.8x or better), and the status codes it answered.

    python bench/serve.py                 # 8 s per point
    python bench/serve.py --seconds 3     # a quick look
    python bench/serve.py --servers lakeinfer,fastapi   # without MLServer
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
WIDTH = 30
WORKERS = "2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(folder: Path) -> dict[str, Path]:
    import joblib
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(42)
    x = rng.normal(size=(20_000, WIDTH)).astype(np.float32)
    y = ((x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3]) > 0).astype(np.int64)
    boosting = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(x, y)
    joblib.dump(boosting, folder / "gradient_boosting.joblib")
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, xgb.DMatrix(x, y), 50)
    booster.save_model(folder / "xgboost.ubj")
    return {"gradient_boosting": folder / "gradient_boosting.joblib", "xgboost": folder / "xgboost.ubj"}


def mlserver_bin(venv: Path) -> Path:
    binary = venv / "bin" / "mlserver"
    if not binary.exists():
        print(f"installing MLServer into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mlserver", "mlserver-sklearn",
                        "mlserver-xgboost", "uvloop<0.22"], check=True)  # MLServer 1.7 fails to start on uvloop 0.22+
    return binary


def start(kind: str, name: str, path: Path, work: Path, venv: Path,
          options: tuple[str, ...] = ("--workers", WORKERS)) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ}
    if kind.startswith("lakeinfer"):
        ledger = (["--ledger", f"delta:{work / f'ledger-{kind}-{name}'}", "--ledger-wal",
                   str(work / f"wal-{kind}-{name}")] if kind.startswith("lakeinfer-ledger") else [])
        ledger += ["--ledger-fsync"] if kind == "lakeinfer-ledger-fsync" else []
        cmd = [sys.executable, "-m", "lakeinfer", "serve", "--model", str(path), "--name", name, "--trust-model",
               "--port", str(port), *options, *ledger]
    elif kind == "fastapi":
        env["BENCH_MODEL"] = str(path)
        cmd = [sys.executable, "-m", "uvicorn", "_fastapi_app:app", "--port", str(port), "--log-level", "warning",
               "--no-access-log", "--workers", WORKERS, "--app-dir", str(HERE)]
    else:
        folder = work / f"mlserver-{name}"
        (folder / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name / f"model{path.suffix}")
        runtime = "mlserver_xgboost.XGBoostModel" if path.suffix == ".ubj" else "mlserver_sklearn.SKLearnModel"
        (folder / "settings.json").write_text(json.dumps(
            {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
             "parallel_workers": int(WORKERS)}))
        (folder / name / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": runtime, "parameters": {"uri": f"./model{path.suffix}"},
             "max_batch_size": 64, "max_batch_time": 0.005}))
        cmd = [str(mlserver_bin(venv)), "start", str(folder)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    return wait_up(proc, url, kind), url


def wait_up(proc: subprocess.Popen[bytes], url: str, kind: str, *, answers: int = 20,
            timeout: float = 120, payload: bytes | None = None) -> subprocess.Popen[bytes]:
    """``proc`` once ``answers`` requests in a row, each on a new connection, were answered (every
    worker or replica is up); stopped, and the bench ended, if that takes over ``timeout`` s.
    ``payload``: the request's body (default: this bench's)."""
    deadline = time.monotonic() + timeout
    answered = 0
    payload = body() if payload is None else payload
    while time.monotonic() < deadline:
        try:
            ok = httpx.post(url, content=payload, headers={"Content-Type": "application/json"}, timeout=5).status_code == 200
        except httpx.TransportError:
            ok = False
        answered = answered + 1 if ok else 0
        if answered == answers:
            return proc
        if not ok:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit(f"{kind} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def body() -> bytes:
    row = np.random.default_rng(7).normal(size=WIDTH).round(4).tolist()
    return json.dumps({"inputs": [{"name": "X", "shape": [1, WIDTH], "datatype": "FP32",
                                   "data": row}]}).encode()


def hey(url: str, concurrency: int, seconds: float, body_file: Path) -> tuple[float, float, float]:
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
                          "-D", str(body_file), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    codes = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    if any(code != "200" for code, _ in codes):
        print(f"    non-200 answers: {codes}")
    return rps, p50, p99


def hey_codes(url: str, concurrency: int, body_file: Path, *, seconds: float | None = None,
              requests: int | None = None) -> tuple[float, dict[int, int], str]:
    """hey's total time, answers by status code, and its error lines (resets, timeouts)."""
    span = ["-z", f"{seconds}s"] if seconds is not None else ["-n", str(requests)]
    out = subprocess.run(["hey", *span, "-c", str(concurrency), "-t", "60", "-m", "POST", "-T", "application/json",
                          "-D", str(body_file), url], capture_output=True, text=True, check=True).stdout
    total = float(re.search(r"Total:\s+([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    codes = {int(code): int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = out.split("Error distribution:", 1)[1].strip() if "Error distribution:" in out else ""
    return total, codes, errors


def overload(name: str, path: Path, work: Path, body_file: Path, seconds: float) -> None:
    """lakeinfer (--workers 1 --max-queue 100) under 1,000 connections, ten times the callers its
    queue holds, each sending again as soon as it is answered (hey does not wait out Retry-After):
    200s per second against the capacity, 200s per second with 64 connections, before and after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:  # hey's 1,000 sockets; the server inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096 if hard == resource.RLIM_INFINITY else min(4096, hard), hard))
    proc, url = start("lakeinfer", name, path, work, Path(), ("--workers", "1", "--max-queue", "100"))
    try:
        hey_codes(url, 64, body_file, seconds=1)  # warm-up
        before, ok_before, _ = hey_codes(url, 64, body_file, seconds=seconds)
        storm, codes, errors = hey_codes(url, 1000, body_file, requests=40_000)
        after, ok_after, _ = hey_codes(url, 64, body_file, seconds=seconds)
    finally:
        stop(proc)
    capacity = (ok_before.get(200, 0) / before + ok_after.get(200, 0) / after) / 2
    goodput = codes.get(200, 0) / storm
    print(f"  overload (lakeinfer --workers 1 --max-queue 100): capacity {capacity:,.0f} ok/s with 64 connections; "
          f"1,000 connections x 40 requests: answers {dict(sorted(codes.items()))} in {storm:.2f} s, "
          f"goodput {goodput:,.0f} ok/s = {goodput / capacity:.2f}x capacity"
          + (f"; errors: {errors}" if errors else ""), flush=True)


def round_trip_ms(url: str, requests: int = 3000, payload: bytes | None = None) -> tuple[float, float]:
    """p50 of one request at a time over one kept-alive connection, timed per request to the
    microsecond (hey's figures are rounded to 0.1 ms): a plain socket client, whose own time is
    counted in it, so the figure is what the server adds plus the client's and the loopback's.
    Returns the p50 and p99 in ms; ``payload``: the JSON body (default: this bench's request)."""
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    payload = body() if payload is None else payload
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    times = []
    with socket.create_connection((host, int(port))) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for i in range(requests + 200):
            start = time.perf_counter()
            conn.sendall(request)
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buffer) < length:
                buffer += conn.recv(65536)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{url} answered {head.splitlines()[0]!r}")
            buffer = buffer[length:]
            if i >= 200:  # the first ones warm up
                times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def model_time_ms(path: Path) -> float:
    """Median of the framework's own time for one one-row call: what every server here runs."""
    x = np.random.default_rng(7).normal(size=(1, WIDTH)).astype(np.float32)
    if path.suffix == ".ubj":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(path))
        booster.set_param({"nthread": 1})

        def call() -> object:
            return booster.inplace_predict(x)
    else:
        import joblib

        model = joblib.load(path)

        def call() -> object:
            return model.predict_proba(x)
    times = []
    for _ in range(1000):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--servers", default="lakeinfer,lakeinfer-ledger,mlserver,fastapi")
    parser.add_argument("--no-overload", action="store_true", help="skip the overload run of lakeinfer")
    parser.add_argument("--mlserver-venv", default=str(HERE.parent / ".bench" / "mlserver-venv"))
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("bench/serve.py needs the load generator hey: apt-get install hey")
    work = Path(tempfile.mkdtemp(prefix="lakeinfer-serve-bench-"))
    body_file = work / "body.json"
    body_file.write_bytes(body())
    models = train(work)
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    print(f"machine: {os.cpu_count()} cores; one-row requests; {args.seconds:g} s per point")
    print(f"every server: {WORKERS} worker processes")
    for name, path in models.items():
        own = model_time_ms(path)
        print(f"\n{name} ({path.name}): the model's own time per one-row call {own:.3f} ms")
        print(f"  {'server':<10}{'conc':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        exact: dict[str, float] = {}
        for kind in servers:
            proc, url = start(kind, name, path, work, Path(args.mlserver_venv))
            try:
                hey(url, 4, 1, body_file)  # warm-up
                exact[kind] = round_trip_ms(url)[0]
                print(f"  {kind:<10}{1:>6}{'':>10}{exact[kind]:>9.3f}   (one connection, timed to the microsecond)",
                      flush=True)
                for c in levels:
                    results[(kind, c)] = hey(url, c, args.seconds, body_file)
                    rps, p50, p99 = results[(kind, c)]
                    print(f"  {kind:<10}{c:>6}{rps:>10,.0f}{p50:>9.2f}{p99:>9.2f}", flush=True)
            finally:
                stop(proc)
        for mine in (k for k in servers if k == "lakeinfer"):
            for c in levels:
                ours = results[(mine, c)][0]
                ratios = ", ".join(f"{ours / results[(k, c)][0]:.2f}x {k}" for k in servers if not k.startswith("lakeinfer"))
                if ratios:  # the other servers run (not only lakeinfer's variants)
                    print(f"  concurrency {c}: {mine} req/s = {ratios}")
                for variant in (k for k in servers if k.startswith("lakeinfer-ledger")):
                    logged = results[(variant, c)]
                    print(f"  concurrency {c}: {variant} {logged[0] / ours:.2f}x the req/s, "
                          f"p99 {logged[2] / results[(mine, c)][2]:.2f}x")
            if "lakeinfer" in servers and not args.no_overload:
                overload(name, path, work, body_file, args.seconds)
            if "lakeinfer" in exact:
                print(f"  lakeinfer p50 at concurrency 1 over the model's own time: {exact['lakeinfer'] - own:.3f} ms "
                      f"(timed to the microsecond; hey: {results[('lakeinfer', 1)][1] - own:.2f} ms)"
                      if 1 in levels else f"  lakeinfer p50 at concurrency 1 over the model's own time: "
                      f"{exact['lakeinfer'] - own:.3f} ms")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
