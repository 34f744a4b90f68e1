"""gRPC over TLS through the TLS front to the running Serve application, with the typed client."""

from __future__ import annotations

import grpc
import pytest

from cluster.core.errors import NotFound, Unavailable
from tests.ports import free_port
from tests.tls_certs import make_certs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls(chain, tmp_path_factory):
    from ray_apps.serve.tls_front import start_tls_front

    certs = make_certs(tmp_path_factory.mktemp("tls"))
    sv = chain["settings"].serve
    port = free_port()
    server, handler = start_tls_front(certfile=certs["server"], keyfile=certs["key"], port=port,
                                      upstream=f"{sv.grpc_client_host}:{sv.grpc_port}", host="127.0.0.1")
    yield {"port": port, **certs}
    server.stop(grace=0)
    handler.close()


def _user(chain) -> str:
    from cluster.core.storage import open_lake

    return str(open_lake(chain["settings"]).read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"].iloc[0])


def test_the_client_over_tls_gets_the_same_answers_as_in_plaintext(chain, tls):
    from ray_apps.client import MarketingClient

    sv = chain["settings"].serve
    uid = _user(chain)
    http = f"http://{sv.http_client_host}:{sv.http_port}"
    with MarketingClient(f"localhost:{tls['port']}", http, tls=True, ca_file=tls["ca"], timeout_s=20) as secure, \
            MarketingClient.from_settings(chain["settings"], timeout_s=20) as plain:
        assert secure.get_segment(uid) == plain.get_segment(uid)
        assert secure.get_profile(uid, ["rfm"]) == plain.get_profile(uid, ["rfm"])
        with pytest.raises(NotFound):
            secure.get_segment("tls-no-such-user")


def test_health_checks_pass_through_the_front(chain, tls):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(tls["ca"].read_bytes())
    with grpc.secure_channel(f"localhost:{tls['port']}", creds) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_that_does_not_trust_the_server_gets_nothing(chain, tls):
    from ray_apps.client import MarketingClient

    sv = chain["settings"].serve
    with MarketingClient(f"localhost:{tls['port']}", f"http://{sv.http_client_host}:{sv.http_port}", tls=True,
                         ca_file=tls["other-ca"], timeout_s=3, retries=0) as client, pytest.raises(Unavailable):
        client.get_segment(_user(chain))
