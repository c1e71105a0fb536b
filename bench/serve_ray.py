"""Serving on Ray Serve: `lakeinfer serve --engine ray` against a hand-written Ray Serve deployment.

Both serve the same XGBoost booster file (50 trees, 30 features, binary:logistic) with 2 replicas,
each on a private local Ray, and answer the same one-row v2 request ([1, 30] FP32) with the same
outputs (prediction and probability):

  lakeinfer     `lakeinfer serve --engine ray --replicas 2` (its adaptive batcher in each
                replica; on a private Ray, Ray Serve's high-throughput mode: HAProxy ingress)
  handmade      a `@serve.deployment` class as a performance-aware Ray user writes it: the
                booster loaded once per replica (nthread 1), `@serve.batch(max_batch_size=64,
                batch_wait_timeout_s=0.002)` around one predict call per batch, the v2 JSON parsed
                and answered with orjson; behind Ray Serve's default ingress (its Python proxy)
  handmade-ht   the same deployment in Ray Serve's high-throughput mode, as Ray's docs give it
                (RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1): HAProxy forwards
                each request to a replica's own HTTP server

For 1 and 64 connections (hey) it prints req/s, p50 and p99 and the ratios to each anchor
(target >= 1.5x req/s at 64 connections).

    python bench/serve_ray.py               # 8 s per point
    python bench/serve_ray.py --seconds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import body, free_port, hey, stop, train, wait_up  # noqa: E402  (the serving bench's own parts)

HANDMADE = r'''
import signal, sys, threading
import numpy as np, orjson, ray, xgboost as xgb
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

path, port = sys.argv[1], int(sys.argv[2])


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class Model:
    def __init__(self):
        self.booster = xgb.Booster(model_file=path)
        self.booster.set_param({"nthread": 1})

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict(self, rows: list[np.ndarray]) -> list[tuple[int, list[float]]]:
        p = self.booster.inplace_predict(np.vstack(rows))
        return [(int(v > 0.5), [float(1 - v), float(v)]) for v in p]

    async def __call__(self, request: Request) -> Response:
        payload = orjson.loads(await request.body())
        tensor = payload["inputs"][0]
        label, probability = await self.predict(np.asarray(tensor["data"], dtype=np.float32).reshape(1, -1))
        return Response(orjson.dumps({"model_name": "xgboost", "outputs": [
            {"name": "prediction", "shape": [1], "datatype": "INT64", "data": [label]},
            {"name": "probability", "shape": [1, 2], "datatype": "FP64", "data": probability}]}),
            media_type="application/json")


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Model.bind(), route_prefix="/v2/models/xgboost/infer")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
while not stop.wait(0.5):
    pass
serve.shutdown()
ray.shutdown()
'''


def start(kind: str, model: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    for name in [name for name in env if name.startswith("RAY_SERVE_")]:
        del env[name]
    if kind == "handmade-ht":  # HAProxy's files in the bench's folder, its stats on free ports
        env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
                    **{f"RAY_SERVE_HAPROXY_{name}": str(work / "h" / file) for name, file in (
                        ("CONFIG_FILE_LOC", "haproxy.cfg"), ("SOCKET_PATH", "a.sock"),
                        ("METRICS_SOCKET_PATH", "m.sock"), ("SERVER_STATE_FILE", "state"))},
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(work / "h")})
    if kind == "lakeinfer":
        cmd = [sys.executable, "-m", "lakeinfer", "serve", "--engine", "ray", "--replicas", "2", "--model", str(model),
               "--name", "xgboost", "--port", str(port)]
    else:
        env["RAY_AUTH_MODE"] = "disabled"
        cmd = [sys.executable, "-c", HANDMADE, str(model), str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/models/xgboost/infer"
    return wait_up(proc, url, kind, answers=40, timeout=180), url  # 40 in a row: both replicas up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bsr-"))  # short: HAProxy takes socket paths of up to 97 bytes
    model = train(work)["xgboost"]
    body_file = work / "body.json"
    body_file.write_bytes(body())
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    for kind in ("lakeinfer", "handmade", "handmade-ht"):
        proc, url = start(kind, model, work)
        try:
            for connections in (1, 64):
                results[(kind, connections)] = hey(url, connections, args.seconds, body_file)
        finally:
            stop(proc)
            # Ray's shutdown may leave the HAProxy it started: the one with its config in this folder
            subprocess.run(["pkill", "-f", str(work / "h")], check=False)
    print("server        conns      req/s    p50 ms    p99 ms")
    for (kind, connections), (rps, p50, p99) in results.items():
        print(f"{kind:12s} {connections:6d} {rps:10,.0f} {p50:9.1f} {p99:9.1f}")
    for anchor in ("handmade", "handmade-ht"):
        ratio = results[("lakeinfer", 64)][0] / results[(anchor, 64)][0]
        print(f"lakeinfer / {anchor} at 64 connections: {ratio:.2f}x req/s (target >= 1.5)")


if __name__ == "__main__":
    main()
