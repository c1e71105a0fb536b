"""A staged model against the unsplit one, on the same cores: an ONNX MLP of several hundred MiB.

For the unsplit model and for 2 and 3 stages (``lakeinfer split``), each run as the real command:

  batch   rows/s of ``lakeinfer batch`` over the same Parquet files, and the ratio to unsplit
  memory  peak resident memory of the command and of each stage process (sampled every 20 ms
          through load and scoring), beside each stage's share of the weights
  busy    each stage process's CPU seconds over the job's seconds
  moved   bytes per row that cross each stage boundary (the activations sent on)
  serve   p50 / p99 of one-row v2 requests at 1 and 64 connections (closed loop, httpx threads)

    python bench/staged.py                         # 288 MiB of weights, 20,000 rows
    python bench/staged.py --hidden 1024 --rows 5000 --seconds 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEATURES = [f"f{i}" for i in range(5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT),
                                                                    os.environ.get("PYTHONPATH")) if p)}


class Sampler:
    """Peak RSS and last CPU times of a process and its descendants, every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.stage_pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in processes:
                try:
                    if p.pid != self.root.pid and "spawn_main" not in " ".join(p.cmdline()):
                        continue
                    if p.pid != self.root.pid and p.pid not in self.stage_pids:
                        self.stage_pids.append(p.pid)
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), p.memory_info().rss)
                    times = p.cpu_times()
                    self.cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def batch(model: Path, data: Path, out: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--input", str(data), "--output",
           str(out), "--keep", "id", "--overwrite", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    sampler = Sampler(proc.pid)
    stdout, stderr = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"batch failed: {stderr}")
    summary = json.loads(stdout)
    return {"summary": summary, "command_rss": sampler.peak.get(proc.pid, 0),
            "stage_rss": [sampler.peak[p] for p in sampler.stage_pids],
            "stage_busy": [sampler.cpu.get(p, 0.0) / summary["seconds"] for p in sampler.stage_pids]}


def serve_latency(model: Path, seconds: float, connections: int) -> tuple[float, float, float]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "serve", "--model", str(model), "--name", "m",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        rng = np.random.default_rng(0)
        body = {"inputs": [{"name": f, "shape": [1], "datatype": "FP64", "data": [float(rng.normal())]}
                           for f in FEATURES]}
        with httpx.Client() as client:  # the first request starts the stages: not timed
            assert client.post(f"{url}/v2/models/m/infer", json=body, timeout=120).status_code == 200
        times: list[float] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def loop() -> None:
            mine = []
            with httpx.Client() as client:
                while time.monotonic() < stop_at:
                    start = time.perf_counter()
                    response = client.post(f"{url}/v2/models/m/infer", json=body, timeout=60)
                    mine.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.text
            with lock:
                times.extend(mine)

        threads = [threading.Thread(target=loop) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ms = np.array(times) * 1000
        return len(times) / seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def moved_per_row(folder: Path) -> list[int]:
    """Bytes per row each stage sends on to the next (from the stage files' output shapes)."""
    import onnxruntime as ort

    from lakeinfer.models.staged import Manifest

    sizes = {"tensor(float)": 4, "tensor(double)": 8, "tensor(int64)": 8}
    manifest = Manifest.read(str(folder))
    made: dict[str, int] = {}
    result = []
    for stage in manifest.stages:
        session = ort.InferenceSession(str(folder / stage.file), providers=["CPUExecutionProvider"])
        for out in session.get_outputs():
            made[out.name] = sizes.get(out.type, 4) * int(np.prod([d for d in out.shape[1:] if isinstance(d, int)]))
        del session
        result.append(sum(made[name] for name in stage.outputs))
    return result[:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=9, help="MLP layers (layers - 1 hidden matrices)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per serve point")
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--repeat", type=int, default=2, help="batch runs per model, interleaved; the fastest counts")
    parser.add_argument("--no-serve", action="store_true")
    args = parser.parse_args()

    import pandas as pd
    from tests.integration.test_staged import residual_mlp

    from lakeinfer.models.staged import split_model

    work = Path(tempfile.mkdtemp(prefix="bench-staged-"))
    model = residual_mlp(work / "mlp.onnx", hidden=args.hidden, layers=args.layers)
    data = work / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    per_file = max(1, args.rows // 8)
    for i in range(0, args.rows, per_file):
        frame = pd.DataFrame(rng.normal(size=(min(per_file, args.rows - i), len(FEATURES))), columns=FEATURES)
        frame.insert(0, "id", np.arange(i, i + len(frame)))
        frame.to_parquet(data / f"part-{i // per_file:03d}.parquet")
    weights = os.path.getsize(model)
    print(f"model: residual MLP, hidden {args.hidden}, {args.layers} layers, {weights / 2**20:.0f} MiB; "
          f"{args.rows:,} rows; {psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    models = {"unsplit": model}
    manifests = {}
    for count in (int(c) for c in args.stages.split(",")):
        manifests[count] = split_model(str(model), count, str(work / f"mlp-{count}"))
        models[f"{count} stages"] = work / f"mlp-{count}"

    best: dict[str, dict[str, object]] = {}
    for _ in range(args.repeat):  # interleaved, so a busy spell of the machine hits every model alike
        for name, path in models.items():
            result = batch(path, data, work / f"out-{name.replace(' ', '-')}")
            summary = result["summary"]
            result["rate"] = summary["rows"] / summary["seconds"]  # type: ignore[index,operator]
            if name not in best or result["rate"] > best[name]["rate"]:  # type: ignore[operator]
                best[name] = result
    base = best["unsplit"]["rate"]
    print("\n| model | rows/s | vs unsplit | command RSS | stage RSS (MiB) | stage weight share | stage busy | bytes/row moved |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path in models.items():
        result = best[name]
        rate = result["rate"]
        count = int(name.split()[0]) if name != "unsplit" else 0
        shares = ([f"{s.weight_bytes / manifests[count].weight_bytes:.2f}" for s in manifests[count].stages]
                  if count else ["1.00"])
        moved = moved_per_row(path) if count else []
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {result['command_rss'] / 2**20:,.0f} MiB | "  # type: ignore[operator]
              f"{' / '.join(f'{r / 2**20:,.0f}' for r in result['stage_rss']) or '-'} | {' / '.join(shares)} | "  # type: ignore[attr-defined]
              f"{' / '.join(f'{b:.2f}' for b in result['stage_busy']) or '-'} | "  # type: ignore[attr-defined]
              f"{' / '.join(f'{m:,}' for m in moved) or '-'} |")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    if args.no_serve:
        return
    print("\n| model | connections | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, path in models.items():
        for connections in (1, 64):
            rps, p50, p99 = serve_latency(path, args.seconds, connections)
            print(f"| {name} | {connections} | {rps:,.0f} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
