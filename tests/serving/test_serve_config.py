"""``serve_config.yaml`` is a valid Serve config that points at the application builder and params.yaml sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from fraud_assets.params import load_params
from serving.app import AppArgs, build_app

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


@pytest.fixture(scope="module")
def config() -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))


def test_config_binds_loopback_and_points_at_the_builder(config: ServeDeploySchema) -> None:
    assert config.http_options.host == "127.0.0.1"
    assert config.http_options.port == load_params().serve.port
    (application,) = config.applications
    assert application.import_path == "serving.app:build_app" and application.route_prefix == "/"
    assert AppArgs.model_validate(application.args or {}) == AppArgs()  # names and sizes come from params.yaml


def test_config_deployment_sizes_mirror_params(config: ServeDeploySchema) -> None:
    s = load_params().serve
    (deployment,) = config.applications[0].deployments
    assert deployment.name == "FraudScorer"
    assert deployment.max_ongoing_requests == s.max_ongoing_requests
    assert deployment.max_queued_requests == s.max_queued_requests
    assert deployment.autoscaling_config == {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                             "target_ongoing_requests": s.target_ongoing_requests,
                                             "upscale_delay_s": s.upscale_delay_s,
                                             "downscale_delay_s": s.downscale_delay_s}


def test_builder_sizes_the_deployment_from_params() -> None:
    app = build_app({"tracking_uri": "sqlite:///unused.db"})
    assert isinstance(app, Application)
    deployment = app._bound_deployment
    s = load_params().serve
    assert deployment.max_ongoing_requests == s.max_ongoing_requests
    assert deployment._deployment_config.autoscaling_config.max_replicas == s.max_replicas
    assert deployment._deployment_config.autoscaling_config.min_replicas == s.min_replicas
    assert app._bound_deployment.init_kwargs["tracking_uri"] == "sqlite:///unused.db"
    assert app._bound_deployment.init_kwargs["num_threads"] == s.num_threads
    assert deployment._deployment_config.max_queued_requests == s.max_queued_requests
    kwargs = app._bound_deployment.init_kwargs
    assert kwargs["max_batch_size"] == s.max_batch_size
    assert kwargs["batch_wait_timeout_s"] == s.batch_wait_timeout_s
    assert kwargs["reload_interval_s"] == s.reload_interval_s
    assert (kwargs["max_batch_rows"], kwargs["max_body_bytes"]) == (s.max_batch_rows, s.max_body_bytes)
    assert kwargs["prediction_log"] is None  # the replica reads $FRAUD_PREDICTION_LOG (a URL may hold a password)


def test_builder_refuses_unknown_args() -> None:
    with pytest.raises(ValidationError, match="modle_name"):
        build_app({"modle_name": "typo"})
