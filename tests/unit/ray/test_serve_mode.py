"""A private Ray's Ray Serve mode: HAProxy ingress unless the user's environment says otherwise."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from lakeinfer.ray import session


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the settings, each restored after the test (what the code under test sets too)."""
    for name in (*session._SERVE_VARS, *session._HAPROXY_VARS, session._READY_VAR):
        monkeypatch.setenv(name, "")  # recorded first: a plain delenv of an unset name is not undone
        monkeypatch.delenv(name)


def test_high_throughput_mode_with_its_files_in_the_rays_folder(clean_env: None) -> None:
    folder = tempfile.mkdtemp(prefix="t-", dir="/tmp")
    try:
        assert session._high_throughput_serve(folder) is None
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(folder)
        ports = [int(os.environ[name]) for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                                     "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                                                     "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")]
        # not Ray's fixed ports: a second Ray Serve on the machine (or anything on 8500) and the
        # fallback proxy's actor died, and the app with it
        assert not {8404, 9101, 8500, 9500} & set(ports) and len(set(ports)) == 4
        # a stopping replica is held open 2 s for HAProxy (Ray's 30 s made every stop take 30 s)
        assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    finally:
        os.rmdir(folder)


def test_proxies_get_a_minute_to_start_unless_the_user_says(clean_env: None, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    # Ray Serve's 5 s, and on a loaded machine the controller killed the proxy still starting:
    # `serve.start` failed with "the actor died" (HAProxyManager)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    session._serving(str(tmp_path))
    assert os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "60"
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "7")
    session._serving(str(tmp_path))
    assert os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "7"


def test_a_deep_folder_gets_a_short_one_for_haproxys_sockets(clean_env: None, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 40)
    deep.mkdir()
    own = session._high_throughput_serve(str(deep))
    try:
        assert own is not None and os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] == own
        # the longest path HAProxy is given: its metrics socket, in a folder per node (56 characters)
        # (HAProxy binds PATH.PID.tmp first: 95 leaves room for a 7-digit pid under 108 bytes)
        assert len(os.path.join(own, "n" * 56, "m.sock")) <= 95
    finally:
        os.rmdir(own or "")


def test_the_users_own_setting_is_kept(clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert session._high_throughput_serve(str(tmp_path)) is None
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ and "RAY_SERVE_HAPROXY_SOCKET_PATH" not in os.environ


def test_the_mode_asked_for_by_the_user_keeps_their_settings_and_fills_the_rest(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the mode turned on by the user (as docs/ray.md says for a cluster): their port is theirs, and
    # the other settings are still the private Ray's own, not Ray's shared defaults
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    own = session._high_throughput_serve(str(tmp_path))
    if own is not None:  # pytest's folder is deep: HAProxy's files went to a short one
        os.rmdir(own)
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(own or str(tmp_path))
    assert os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"


def test_free_ports_are_distinct() -> None:
    from lakeinfer._ports import free_ports

    ports = free_ports(8)
    assert len(set(ports)) == 8


def test_an_actor_that_died_is_named_with_why_in_one_line() -> None:
    error = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: ServeController\n"
                         "\tactor_id: 9f\n\tpid: 12\nThe actor is dead because its worker process has died. Worker exit "
                         "type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. "
                         "End of file. There are some potential root causes.")
    assert session.first_line(error) == ("The actor died unexpectedly before finishing this task. "
                                         "(ServeController; Worker unexpectedly exits with a connection error code 2)")
    assert session.first_line(RuntimeError("\n cannot join \nmore")) == "cannot join"
    assert session.first_line(RuntimeError()) == "RuntimeError"
