"""The Serve config file deploys what `pmkt serve deploy` deploys with the cluster profile."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[4] / "ray_apps" / "serve" / "serve-config.yaml"


def test_the_config_is_valid_for_serve_and_matches_the_cluster_profile():
    from ray.serve.schema import ServeDeploySchema

    from cluster.core.settings import load_settings
    from ray_apps.serve.api import MarketingApi
    from ray_apps.serve.services import GRPC_SERVICERS

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    sv = load_settings("cluster", env={"PMKT_HOME": "/nonexistent"}).serve
    assert config.grpc_options.grpc_servicer_functions == list(GRPC_SERVICERS)
    assert (config.http_options.port, config.grpc_options.port) == (sv.http_port, sv.grpc_port)
    assert config.http_options.request_timeout_s == config.grpc_options.request_timeout_s == sv.request_timeout_s
    assert config.proxy_location == sv.proxy_location

    (app,) = config.applications
    module, _, attr = app.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app.args == {"profile": "cluster"}
    (deployment,) = app.deployments
    assert deployment.name == MarketingApi.name
    assert deployment.logging_config.enable_access_log == sv.access_log
    assert deployment.ray_actor_options.num_cpus == MarketingApi.ray_actor_options["num_cpus"]
    assert {k: deployment.autoscaling_config[k] for k in sv.autoscaling.model_dump()} == sv.autoscaling.model_dump()
