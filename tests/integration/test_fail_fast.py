"""serve and stream stop at once, with one line, when the pipeline cannot be built."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Trained, run_cli
from tests.serving import free_port


def _one_line(result, *phrases: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lakeinfer: error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_serve_exits_on_a_bad_spec_step(onnx_model: Trained, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'[model]\npath = "{onnx_model.path}"\nfeatures = ["f0", "f1", "f2", "f3", "f4"]\n\n'
                    '[[pipeline.steps]]\nop = "threshold"\nvalue = 0.9\n')
    _one_line(run_cli("serve", "--spec", spec, "--port", free_port(), timeout=60),
              "pipeline.steps[0]", "unknown key 'value'")


def test_stream_exits_when_the_model_names_no_features(onnx_model: Trained) -> None:
    # serve takes such a model by its input tensor (test_serve.py); stream reads records, which need
    # the features' names. No broker is reached: the pipeline is built before connecting
    _one_line(run_cli("stream", "--model", onnx_model.path, "--bootstrap-servers", f"127.0.0.1:{free_port()}",
                      "--input-topic", "a", "--output-topic", "b", timeout=60),
              "does not name its input features")
