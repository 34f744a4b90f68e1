"""A client in its own process that knows only the generated stubs and plain HTTP.

Usage: python client_process.py GRPC_TARGET HTTP_BASE USER_ID [USER_ID ...]
Prints one JSON document: per user the gRPC and HTTP answers, and the error cases.
"""

import json
import sys
import urllib.error
import urllib.request

import grpc
from google.protobuf.json_format import MessageToDict

from protos.marketing.v1 import segment_pb2, segment_pb2_grpc


def grpc_call(stub, user_id):
    try:
        resp = stub.GetSegment(segment_pb2.GetSegmentRequest(user_id=user_id), timeout=10)
        return {"code": "OK", "body": MessageToDict(resp, preserving_proto_field_name=True)}
    except grpc.RpcError as err:
        return {"code": err.code().name, "details": err.details()}


def http_call(base, user_id):
    url = f"{base}/v1/users/{urllib.request.quote(user_id, safe='')}/segment"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return {"status": resp.status, "body": json.loads(resp.read())}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": json.loads(err.read() or b"null")}


def main():
    target, base, *users = sys.argv[1:]
    cases = {"unknown": "no-such-user-42", "empty": "", "long": "x" * 129}  # serve.max_user_id_length (128) + 1
    with grpc.insecure_channel(target) as channel:
        stub = segment_pb2_grpc.SegmentServiceStub(channel)
        out = {
            "users": {u: {"grpc": grpc_call(stub, u), "http": http_call(base, u)} for u in users},
            "errors": {k: {"grpc": grpc_call(stub, v), "http": http_call(base, v)} for k, v in cases.items()},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
