"""Start-up helpers that need no Ray: readiness polling fails loudly with the last answer."""

from __future__ import annotations

import socket

import pytest

from serving.app import wait_until_ready


def test_wait_until_ready_times_out_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match=rf"127\.0\.0\.1:{port}/ready not 200.*ConnectError"):
        wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=0.6)


def test_importing_the_app_starts_nothing() -> None:
    import ray

    import serving.app  # noqa: F401

    assert not ray.is_initialized()
