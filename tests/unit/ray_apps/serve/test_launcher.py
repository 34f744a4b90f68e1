"""A Serve proxy that cannot bind its port is reported as the setting to change."""

from __future__ import annotations

import pytest

from cluster.core.errors import FailedPrecondition
from cluster.core.settings import ServeSettings
from ray_apps.serve.launcher import explain_bind_failure

# The two messages Ray Serve 2.x raises (from ProxyActor.ready, wrapped in a RayTaskError).
GRPC_FAILURE = ("ray::ProxyActor.ready() (pid=853, ip=127.0.0.2, actor_id=3446e8, repr=<ProxyActor>)\n"
                "  File \".../ray/serve/_private/proxy.py\", line 1814, in ready\n"
                "RuntimeError: Failed to bind to address [::]:52365; set GRPC_VERBOSITY=debug environment "
                "variable to see detailed error message.")
HTTP_FAILURE = ("ray::ProxyActor.ready() (pid=77, ip=10.99.0.11, actor_id=ab)\n"
                "RuntimeError: Failed to bind to address '0.0.0.0:8000'.")


def test_grpc_port_taken_names_grpc_port_and_node():
    err = explain_bind_failure(RuntimeError(GRPC_FAILURE), ServeSettings(grpc_port=52365, http_port=8000))
    assert isinstance(err, FailedPrecondition)
    assert err.field == "serve.grpc_port"
    assert "52365" in err.message and "127.0.0.2" in err.message
    assert "Traceback" not in err.message and "File " not in err.message


def test_http_port_taken_names_http_port():
    err = explain_bind_failure(RuntimeError(HTTP_FAILURE), ServeSettings(grpc_port=9000, http_port=8000))
    assert err is not None and err.field == "serve.http_port"
    assert "8000" in err.message and "10.99.0.11" in err.message


def test_other_failures_are_not_rewritten():
    assert explain_bind_failure(RuntimeError("actor died"), ServeSettings()) is None


def test_https_options_check_the_files_first(tmp_path):
    from cluster.core.errors import ConfigError
    from ray_apps.serve.launcher import _https_options
    from tests.tls_certs import make_certs

    assert _https_options(ServeSettings()) == {}
    certs = make_certs(tmp_path)
    good = ServeSettings(tls={"certfile": certs["server"], "keyfile": certs["key"]})
    assert _https_options(good) == {"ssl_certfile": str(certs["server"]), "ssl_keyfile": str(certs["key"])}
    certs["key"].chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        _https_options(good)
    missing = ServeSettings(tls={"certfile": tmp_path / "nope.pem", "keyfile": certs["key"]})
    with pytest.raises(ConfigError, match="does not exist"):
        _https_options(missing)
