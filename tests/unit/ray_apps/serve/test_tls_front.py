"""The gRPC TLS front: calls, metadata, statuses and deadlines pass through; plaintext and
untrusted clients are refused; an exposed key is refused."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from cluster.core.errors import ConfigError, FailedPrecondition
from protos.marketing.v1 import segment_pb2, segment_pb2_grpc
from ray_apps.serve.tls_front import start_tls_front
from tests.ports import free_port
from tests.tls_certs import make_certs


class _Segments(segment_pb2_grpc.SegmentServiceServicer):
    """Echoes the caller's authorization metadata as the segment name; 'missing' is NOT_FOUND."""

    def GetSegment(self, request, context):
        if request.user_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no profile for user 'missing'")
        auth = dict(context.invocation_metadata()).get("authorization", "")
        return segment_pb2.GetSegmentResponse(user_id=request.user_id, segment_name=auth)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def front(certs):
    upstream = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    segment_pb2_grpc.add_SegmentServiceServicer_to_server(_Segments(), upstream)
    up_port = free_port()
    upstream.add_insecure_port(f"127.0.0.1:{up_port}")
    upstream.start()
    port = free_port()
    server, handler = start_tls_front(certfile=certs["server"], keyfile=certs["key"], port=port,
                                      upstream=f"127.0.0.1:{up_port}", host="127.0.0.1")
    yield port
    server.stop(grace=0)
    handler.close()
    upstream.stop(grace=0)


def _stub(port: int, ca: bytes | None):
    channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) if ca is not None \
        else grpc.insecure_channel(f"localhost:{port}")
    return channel, segment_pb2_grpc.SegmentServiceStub(channel)


def test_a_call_and_its_metadata_pass_through(front, certs):
    channel, stub = _stub(front, certs["ca"].read_bytes())
    with channel:
        reply = stub.GetSegment(segment_pb2.GetSegmentRequest(user_id="u1"), timeout=5,
                                metadata=[("authorization", "Bearer k-123")])
    assert (reply.user_id, reply.segment_name) == ("u1", "Bearer k-123")


def test_the_upstream_status_and_details_pass_through(front, certs):
    channel, stub = _stub(front, certs["ca"].read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.GetSegment(segment_pb2.GetSegmentRequest(user_id="missing"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "missing" in err.value.details()


@pytest.mark.parametrize("ca", [None, "other-ca"])
def test_plaintext_and_untrusted_clients_get_no_answer(front, certs, ca):
    channel, stub = _stub(front, None if ca is None else certs[ca].read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.GetSegment(segment_pb2.GetSegmentRequest(user_id="u1"), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_unreachable_upstream_is_unavailable(certs):
    port = free_port()
    server, handler = start_tls_front(certfile=certs["server"], keyfile=certs["key"], port=port,
                                      upstream=f"127.0.0.1:{free_port()}", host="127.0.0.1")
    try:
        channel, stub = _stub(port, certs["ca"].read_bytes())
        with channel, pytest.raises(grpc.RpcError) as err:
            stub.GetSegment(segment_pb2.GetSegmentRequest(user_id="u1"), timeout=3)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        server.stop(grace=0)
        handler.close()


def test_a_readable_key_or_a_taken_port_is_refused_clearly(certs, front, tmp_path):
    exposed = tmp_path / "exposed.key"
    exposed.write_bytes(certs["key"].read_bytes())
    exposed.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        start_tls_front(certfile=certs["server"], keyfile=exposed, port=free_port(), upstream="127.0.0.1:1")
    with pytest.raises(FailedPrecondition) as err:
        start_tls_front(certfile=certs["server"], keyfile=certs["key"], port=front, upstream="127.0.0.1:1",
                        host="127.0.0.1")
    assert err.value.field == "serve.tls.grpc_port"
