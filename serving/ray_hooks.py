"""Hooks into Ray 2.60 that keep a local scoring service lean (about 500 MB of RSS less; README "Speed at a bank's
volume").

Both reach into Ray's internals, so ``tests/serving/test_app_startup.py`` checks the Ray version and the patched
names: an upgrade that moves them fails there, not silently in production.

- :func:`no_fallback_proxy` runs inside Serve's controller (``RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH``, Ray's
  supported hook) when the ingress is HAProxy: Serve would also start a Python "fallback" proxy actor on the head
  node (about 210 MB, fixed ports 8500/9500 that two local services on one machine would share), which only
  answers while no replica is up; with ``serve.min_replicas >= 1`` HAProxy answers 503 in that window instead.
- :func:`lean_local_ray` wraps ``ray.init`` of a local, one-node Ray: no autoscaler monitor (one fixed node;
  Serve scales replicas itself, in its controller), no log monitor (``log_to_driver=False`` reads nothing from
  it) and no dashboard API server (``include_dashboard=False`` leaves it only usage stats, which are off):
  three Python processes, about 285 MB. ``ray status`` and the state API then have nothing to ask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

RAY_VERSION = "2.60.0"  # the version these hooks were written and measured against


def no_fallback_proxy() -> None:
    """In the Serve controller: no fallback Python proxy beside HAProxy."""
    from ray.serve._private.proxy_state import ProxyStateManager

    def _none(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    ProxyStateManager._start_fallback_proxy_if_needed = _none  # type: ignore[method-assign]


@contextlib.contextmanager
def lean_local_ray() -> Iterator[None]:
    """``ray.init`` of a local Ray inside this block starts no monitor, log monitor or dashboard API server."""
    from ray._private import node, parameter

    init, api_server = parameter.RayParams.__init__, node.Node.start_api_server

    def lean_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.no_monitor, self.include_log_monitor = True, False

    def no_api_server(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    parameter.RayParams.__init__ = lean_init  # type: ignore[method-assign]
    node.Node.start_api_server = no_api_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__, node.Node.start_api_server = init, api_server  # type: ignore[method-assign]
