"""Server reflection from Python: grpcio-reflection speaks only `grpc.reflection.v1alpha`; the
gateway serves it beside `grpc.reflection.v1` (whose messages are the same on the wire), and both
list the EventStream service to a subscriber with a token."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import PATIENCE

SERVICE = "incode.gateway.v1.EventStreamService"


class _TokenAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token):
        self.token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self.token}"),), None)


def _channel(gateway, tls):
    with open(tls.ca_file, "rb") as ca:
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=ca.read()),
            grpc.metadata_call_credentials(_TokenAuth(tls.token)),
        )
    return grpc.secure_channel(gateway.grpc_addr, credentials)


def test_v1alpha_lists_the_service_through_grpcio_reflection(gateway, tls):
    with _channel(gateway, tls) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert SERVICE in services
        file = database.FindFileContainingSymbol(SERVICE)
        assert file.package == "incode.gateway.v1"


def test_v1_lists_the_service(gateway, tls):
    with _channel(gateway, tls) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(call(iter([request]), timeout=PATIENCE))
        names = [s.name for s in responses[0].list_services_response.service]
        assert SERVICE in names
        assert "grpc.reflection.v1.ServerReflection" in names


def test_reflection_needs_an_identity_when_subscribers_are_configured(gateway, tls):
    with open(tls.ca_file, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    with grpc.secure_channel(gateway.grpc_addr, credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            list(stub.ServerReflectionInfo(iter([request]), timeout=PATIENCE))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("reflection answered a caller without credentials")
