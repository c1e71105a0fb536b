"""The server's metrics object in one process: a registry per app, nothing global."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from lakeinfer.serve.metrics import Metrics


def _values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_apps_in_one_process_count_apart() -> None:
    depth = [3]
    first, second = Metrics(lambda: {"rf": depth[0]}), Metrics(lambda: {"rf": 0})  # a shared registry would refuse the second
    assert not first.multiprocess
    first.request("infer", 200, 0.01, "rf")
    first.request("infer", 200, 0.02, "rf")
    first.request("infer", 400, 0.01, "rf")
    first.request("ready", 200, 0.001)
    first.error("400", "rf")
    first.batch(2, 7, "rf")
    second.request("predict", 200, 0.5, "rf")
    one, two = _values(first), _values(second)
    assert one[("lakeinfer_requests_total", (("code", "200"), ("endpoint", "infer"), ("model", "rf")))] == 2
    assert one[("lakeinfer_requests_total", (("code", "400"), ("endpoint", "infer"), ("model", "rf")))] == 1
    assert one[("lakeinfer_requests_total", (("code", "200"), ("endpoint", "ready"), ("model", "")))] == 1
    assert one[("lakeinfer_errors_total", (("kind", "400"), ("model", "rf")))] == 1
    assert one[("lakeinfer_request_seconds_count", (("endpoint", "infer"), ("model", "rf")))] == 3
    assert one[("lakeinfer_batch_rows_sum", (("model", "rf"),))] == 7
    assert one[("lakeinfer_batch_requests_count", (("model", "rf"),))] == 1
    assert one[("lakeinfer_queue_depth", (("model", "rf"),))] == 3
    assert not any(name == "lakeinfer_requests_total" and dict(labels)["endpoint"] == "infer" for name, labels in two)
    assert two[("lakeinfer_requests_total", (("code", "200"), ("endpoint", "predict"), ("model", "rf")))] == 1
