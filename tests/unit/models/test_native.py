"""Native libraries' errors and output made fit for one line."""

from __future__ import annotations

import os
import sys

import pytest

from lakeinfer.models._native import native_message, native_stderr_captured


def test_native_message_drops_stack_frames_and_location() -> None:
    exc = ValueError("[00:33:51] /__w/xgboost/include/xgboost/json.h:88: Invalid cast, from Null to Object\n"
                     "Stack trace:\n  [bt] (0) /lib/libxgboost.so(+0x2c1a8c) [0x7fa99dac1a8c]\n\n")
    assert native_message(exc) == "Invalid cast, from Null to Object"


def test_native_message_joins_lines_and_blanks_control_characters() -> None:
    exc = ValueError("Check failed: x (\n vs. {\x01) : bad\nStack trace:\n  [bt] (0) f")
    assert native_message(exc) == "Check failed: x ( vs. { ) : bad"
    assert native_message(ValueError("")) == "ValueError"
    assert native_message(ValueError("y" * 400)) == "y" * 297 + "..."


def test_stderr_of_a_failed_native_call_is_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), native_stderr_captured():
        os.write(2, b"[LightGBM] [Fatal] bad model\n")
        raise RuntimeError("bad model")
    assert capfd.readouterr().err == ""


def test_stderr_of_a_successful_native_call_is_passed_on(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_captured():
        os.write(2, b"[LightGBM] [Warning] something\n")
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "[LightGBM] [Warning] something\nafter\n"
