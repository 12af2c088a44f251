"""The Python client against the real gateway: webhooks posted as Incode posts them arrive, every
field intact, through the generated stubs and through the example program, over TLS and with a
subscriber token (or a client certificate, under mutual TLS)."""

from __future__ import annotations

import datetime
import json
import re
import secrets
import subprocess
import sys

import grpc
import pytest
from google.protobuf import json_format

from conftest import HERE, PATIENCE, clean_environment

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def interview_id() -> str:
    """A fresh Incode-like session id, so that tests sharing a gateway never see each other's events."""
    return secrets.token_hex(12)


def stored_events(stub, request, metadata=()) -> list:
    """Every event of a subscription that starts in the past, up to caught_up."""
    events = []
    call = stub.Subscribe(request, timeout=PATIENCE, metadata=metadata)
    try:
        for response in call:
            kind = response.WhichOneof("response")
            if kind == "event":
                events.append(response.event)
            elif kind == "caught_up":
                return events
        pytest.fail("the stream ended before caught_up")
    finally:
        call.cancel()


def run_example(stubs_dir, *args: str, token=None) -> subprocess.CompletedProcess:
    env = clean_environment(PYTHONPATH=str(stubs_dir))
    if token is not None:
        env["INCODE_GATEWAY_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(HERE / "subscriber.py"), *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=env,
    )


def tls_channel(subscriber, gateway, tls):
    """A TLS channel to the gateway that trusts the test CA."""
    return subscriber.open_channel(gateway.grpc_addr, ca_file=tls.ca_file)


def test_receives_every_notification_with_every_field_intact(subscriber, gateway, tls):
    from incode.gateway.v1 import events_pb2

    a, b, c, other = interview_id(), interview_id(), interview_id(), interview_id()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    gateway.notify(
        "/webhooks/incode/onboarding-status",
        {
            "interviewId": a,
            "externalId": "customer-42",
            "onboardingStatus": "ONBOARDING_FINISHED",
            "flowId": "flow-7",
            "score": 97.5,
            "tags": ["kyc", 3, True, None],
            "device": {"os": "android", "rooted": False},
        },
    )
    gateway.notify("/webhooks/incode/onboarding-status", {"interviewId": a, "onboardingStatus": "SOMETHING_NEW"})
    gateway.notify(
        "/webhooks/incode/watchlist-updated",
        {"interviewId": b, "ref": "1683042533-abc", "search_id": "d2e1f", "clientId": "acme"},
    )
    document_expired = json.dumps({"interviewId": c, "document": {"type": "passport"}})
    status, _ = gateway.post("/webhooks/incode/document-expired", document_expired.encode())
    assert status == 200
    gateway.notify("/webhooks/incode/onboarding-status", {"interviewId": other, "onboardingStatus": "ONBOARDING_FINISHED"})

    with tls_channel(subscriber, gateway, tls) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        events = stored_events(
            stub,
            subscriber.subscribe_request(interview_ids=[a, b, c]),
            subscriber.call_metadata(tls.token),
        )

    assert len(events) == 4, "the filter keeps exactly the four events of a, b and c"
    sequences = [event.sequence for event in events]
    assert sequences == sorted(sequences) and sequences[0] > 0 and len(set(sequences)) == 4
    for event in events:
        assert UUID_V7.match(event.id), event.id
        assert TRACEPARENT.match(event.trace_context["traceparent"]), event.trace_context
        received_at = event.received_at.ToDatetime(tzinfo=datetime.timezone.utc)
        assert abs(received_at - started_at) < datetime.timedelta(seconds=30)
    finished, unknown_status, watchlist, unrecognized = events

    assert finished.type == events_pb2.EVENT_TYPE_ONBOARDING_STATUS_CHANGED
    assert finished.WhichOneof("payload") == "onboarding_status_changed"
    changed = finished.onboarding_status_changed
    assert changed.interview_id == a
    assert changed.HasField("external_id") and changed.external_id == "customer-42"
    assert changed.onboarding_status == events_pb2.ONBOARDING_STATUS_ONBOARDING_FINISHED
    assert changed.onboarding_status_raw == "ONBOARDING_FINISHED"
    assert json_format.MessageToDict(changed.additional_fields) == {
        "flowId": "flow-7",
        "score": 97.5,
        "tags": ["kyc", 3, True, None],
        "device": {"os": "android", "rooted": False},
    }

    changed = unknown_status.onboarding_status_changed
    assert changed.interview_id == a
    assert not changed.HasField("external_id"), "externalId stays absent"
    assert changed.onboarding_status == events_pb2.ONBOARDING_STATUS_UNSPECIFIED
    assert changed.onboarding_status_raw == "SOMETHING_NEW"
    assert json_format.MessageToDict(changed.additional_fields) == {}

    assert watchlist.type == events_pb2.EVENT_TYPE_WATCHLIST_UPDATED
    assert watchlist.WhichOneof("payload") == "watchlist_updated"
    updated = watchlist.watchlist_updated
    assert (updated.interview_id, updated.ref, updated.search_id) == (b, "1683042533-abc", "d2e1f")
    assert json_format.MessageToDict(updated.additional_fields) == {"clientId": "acme"}

    assert unrecognized.type == events_pb2.EVENT_TYPE_UNRECOGNIZED_NOTIFICATION
    assert unrecognized.WhichOneof("payload") == "unrecognized_notification"
    kept = unrecognized.unrecognized_notification
    assert (kept.kind, kept.raw_json, kept.interview_id) == ("document-expired", document_expired, c)


def test_the_example_prints_canonical_json_lines_filtered(subscriber, gateway, stubs_dir, tls):
    session = interview_id()
    gateway.notify("/webhooks/incode/onboarding-status", {"interviewId": session, "onboardingStatus": "ID_VALIDATION_FINISHED"})
    gateway.notify(
        "/webhooks/incode/onboarding-status",
        {"interviewId": session, "externalId": "customer-7", "onboardingStatus": "ONBOARDING_FINISHED", "flowId": "flow-1"},
    )

    result = run_example(
        stubs_dir,
        "--addr", gateway.grpc_addr,
        "--ca", tls.ca_file,
        "--interview-id", session,
        "--status", "ONBOARDING_FINISHED",
        "--max-events", "1",
        token=tls.token,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert isinstance(event["sequence"], str), "uint64 is a JSON string"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", event["receivedAt"])
    assert event["type"] == "EVENT_TYPE_ONBOARDING_STATUS_CHANGED"
    assert event["onboardingStatusChanged"] == {
        "interviewId": session,
        "externalId": "customer-7",
        "onboardingStatus": "ONBOARDING_STATUS_ONBOARDING_FINISHED",
        "onboardingStatusRaw": "ONBOARDING_FINISHED",
        "additionalFields": {"flowId": "flow-1"},
    }


def test_the_example_fails_clearly_when_the_gateway_is_unreachable(subscriber, stubs_dir):
    result = run_example(stubs_dir, "--addr", "127.0.0.1:1")

    assert result.returncode == 1
    assert "subscription failed: UNAVAILABLE" in result.stderr


def test_the_subscriber_continues_the_trace_of_the_webhook(subscriber, gateway, tls):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # Incode's call arrives inside a trace (here: one the test makes up).
    trace_id = secrets.token_hex(16)
    session = interview_id()
    gateway.notify(
        "/webhooks/incode/onboarding-status",
        {"interviewId": session, "onboardingStatus": "ONBOARDING_FINISHED"},
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    with tls_channel(subscriber, gateway, tls) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        (event,) = stored_events(
            stub,
            subscriber.subscribe_request(interview_ids=[session]),
            subscriber.call_metadata(tls.token),
        )
    # The gateway's ingest span, a child of Incode's call, is what the event names.
    version, event_trace_id, ingest_span_id, flags = event.trace_context["traceparent"].split("-")
    assert event_trace_id == trace_id

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with subscriber.event_span(event, tracer=provider.get_tracer("test")):
        active = trace.get_current_span().get_span_context()

    assert format(active.trace_id, "032x") == trace_id, "the handler runs inside the same trace"
    (span,) = exporter.get_finished_spans()
    assert format(span.parent.span_id, "016x") == ingest_span_id
    assert span.parent.is_remote
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.name == "process EVENT_TYPE_ONBOARDING_STATUS_CHANGED"
    assert span.attributes["incode_gateway.sequence"] == str(event.sequence)
    assert span.attributes["messaging.message.id"] == event.id


def test_events_are_handled_without_opentelemetry(subscriber, monkeypatch):
    from incode.gateway.v1 import events_pb2

    monkeypatch.setattr(subscriber, "trace", None)
    monkeypatch.setattr(subscriber, "propagate", None)

    with subscriber.event_span(events_pb2.Event(sequence=1)) as span:
        assert span is None


def nested(depth: int, objects_only: bool):
    """A value that makes a body nest ``depth`` levels in all (the body itself is level 1)."""
    value = "leaf"
    for level in range(depth, 1, -1):
        value = {"k": value} if objects_only or level % 2 == 0 else [value]
    return value


def post_status(gateway, path: str, body: bytes) -> int:
    import urllib.error

    try:
        status, _ = gateway.post(path, body)
        return status
    except urllib.error.HTTPError as error:
        return error.code


def test_adversarial_but_accepted_bodies_decode_in_python(subscriber, gateway, tls):
    """What the gateway accepts, the Python protobuf runtime decodes: the deepest nesting it
    allows (objects cost the most levels), odd keys and strings, the largest exact integers,
    large lists, and an unknown kind nested far deeper (kept as text)."""
    from incode.gateway.v1 import events_pb2

    ids = [interview_id() for _ in range(6)]
    extras = [
        {"deep": nested(24, objects_only=True)},
        {"deep": nested(24, objects_only=False)},
        {"\u0000": "\u0000", "": {"": [None, True, False]}, "😀\u2028": "\U0010ffff"},
        {"exact": [2**53, -(2**53), 1e308, -0.0, 5e-324, 0.1]},
        {"many": list(range(5000)), "long": "x" * 30000},
    ]
    for session, extra in zip(ids, extras):
        gateway.notify(
            "/webhooks/incode/onboarding-status",
            {"interviewId": session, "onboardingStatus": "ONBOARDING_FINISHED", **extra},
        )
    unknown_kind = json.dumps({"interviewId": ids[5], "x": nested(100, objects_only=False)})
    assert post_status(gateway, "/webhooks/incode/document-expired", unknown_kind.encode()) == 200

    # One level deeper, or an integer a double cannot hold, is refused before it is stored.
    too_deep = {"interviewId": interview_id(), "onboardingStatus": "UNKNOWN", "deep": nested(25, True)}
    assert post_status(gateway, "/webhooks/incode/onboarding-status", json.dumps(too_deep).encode()) == 422
    inexact = {"interviewId": interview_id(), "onboardingStatus": "UNKNOWN", "n": 2**53 + 1}
    assert post_status(gateway, "/webhooks/incode/onboarding-status", json.dumps(inexact).encode()) == 422

    with tls_channel(subscriber, gateway, tls) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        events = stored_events(
            stub,
            subscriber.subscribe_request(interview_ids=ids),
            subscriber.call_metadata(tls.token),
        )

    assert [event_id(event) for event in events] == ids
    for event, extra in zip(events, extras):
        # Decoded once by grpcio from the stream; again from its own bytes.
        again = events_pb2.Event.FromString(event.SerializeToString())
        assert again == event
        fields = json_format.MessageToDict(event.onboarding_status_changed.additional_fields)
        assert fields == extra
    kept = events[5].unrecognized_notification
    assert kept.raw_json == unknown_kind


def event_id(event) -> str:
    kind = event.WhichOneof("payload")
    return getattr(event, kind).interview_id

def rpc_error(call) -> grpc.RpcError:
    """The error a call that must fail raised."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_a_token_is_required_and_authorizes_its_consumers_only(subscriber, gateway, tls):
    request = subscriber.subscribe_request()
    with tls_channel(subscriber, gateway, tls) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        for metadata in ((), subscriber.call_metadata("not-the-token-" + secrets.token_hex(8))):
            error = rpc_error(lambda: stored_events(stub, request, metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        stored_events(stub, request, subscriber.call_metadata(tls.token))

        ack = subscriber.event_stream_pb2.AckRequest
        answer = stub.Ack(ack(consumer="python-example-eu", sequence=0), metadata=subscriber.call_metadata(tls.token))
        assert answer.sequence == 0
        error = rpc_error(
            lambda: stub.Ack(ack(consumer="billing", sequence=0), metadata=subscriber.call_metadata(tls.token))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert "billing" in error.details()


def test_a_plaintext_client_is_not_served(subscriber, gateway, tls):
    with subscriber.open_channel(gateway.grpc_addr) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        error = rpc_error(
            lambda: stored_events(stub, subscriber.subscribe_request(), subscriber.call_metadata(tls.token))
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error


def test_the_example_fails_clearly_without_a_token(subscriber, gateway, tls, stubs_dir):
    result = run_example(stubs_dir, "--addr", gateway.grpc_addr, "--ca", tls.ca_file, "--max-events", "1")

    assert result.returncode == 1
    assert "subscription failed: UNAUTHENTICATED" in result.stderr


def test_mutual_tls_with_a_client_certificate(subscriber, mutual_tls_gateway, tls, stubs_dir):
    gateway = mutual_tls_gateway
    session = interview_id()
    gateway.notify("/webhooks/incode/onboarding-status", {"interviewId": session, "onboardingStatus": "ONBOARDING_FINISHED"})

    with tls_channel(subscriber, gateway, tls) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        error = rpc_error(lambda: stored_events(stub, subscriber.subscribe_request()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        assert "client certificate" in error.details()

    result = run_example(
        stubs_dir,
        "--addr", gateway.grpc_addr,
        "--ca", tls.ca_file,
        "--cert", tls.client_cert_file,
        "--key", tls.client_key_file,
        "--interview-id", session,
        "--max-events", "1",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["onboardingStatusChanged"]["interviewId"] == session
