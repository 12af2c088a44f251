#!/usr/bin/env python3
"""A subscriber to incode-gateway's event stream, in Python, with grpcio.

It subscribes from the earliest stored event (or after a sequence it already processed) with a
filter, prints every event as one line of protobuf's canonical JSON, and handles each event
inside a span that continues the trace recorded in ``Event.trace_context`` when OpenTelemetry
(``opentelemetry-api``) is installed.

It connects over TLS when given ``--ca`` (or an ``https://`` address), with a client certificate
for mutual TLS (``--cert`` and ``--key``), and authenticates as a subscriber with a bearer token
(``--token``, or better the ``INCODE_GATEWAY_TOKEN`` environment variable).

The stubs are generated from ``proto/`` (see docs/clients.md), for example::

    buf generate --template clients/python.yaml
    INCODE_GATEWAY_TOKEN=... PYTHONPATH=gen/python python3 examples/python/subscriber.py \\
        --addr gateway.internal:50051 --ca ca.pem \\
        --type EVENT_TYPE_ONBOARDING_STATUS_CHANGED --status ONBOARDING_FINISHED
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

import grpc
from google.protobuf import json_format

from incode.gateway.v1 import event_stream_pb2, event_stream_pb2_grpc, events_pb2

try:  # OpenTelemetry is optional: without it, events are handled without a span.
    from opentelemetry import propagate, trace
except ImportError:
    propagate = None
    trace = None

DEFAULT_ADDR = "127.0.0.1:50051"
TOKEN_VARIABLE = "INCODE_GATEWAY_TOKEN"


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def open_channel(
    addr: str,
    *,
    ca_file: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
    server_name: Optional[str] = None,
) -> grpc.Channel:
    """A channel to the gateway's internal listener, ``host:port``. TLS when the address starts
    with ``https://`` or any TLS file is given: ``ca_file`` is the CA that signed the gateway's
    certificate (the system's roots without it), ``cert_file`` and ``key_file`` the client
    certificate for mutual TLS, ``server_name`` the name to verify when it is not the host.
    Close it when done (it is a context manager)."""
    tls = addr.startswith("https://") or any((ca_file, cert_file, key_file))
    target = addr.removeprefix("https://").removeprefix("http://")
    if not tls:
        return grpc.insecure_channel(target)
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def call_metadata(token: Optional[str]) -> tuple:
    """The metadata that authenticates a call as the subscriber the token belongs to."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def subscribe_request(
    types: Sequence[int] = (),
    interview_ids: Sequence[str] = (),
    statuses: Sequence[int] = (),
    after_sequence: Optional[int] = None,
) -> event_stream_pb2.SubscribeRequest:
    """The ``Subscribe`` request: from the earliest event, or after ``after_sequence``; empty
    filter lists select everything."""
    start = event_stream_pb2.StartPosition()
    if after_sequence is None:
        start.earliest.SetInParent()
    else:
        start.after_sequence = after_sequence
    return event_stream_pb2.SubscribeRequest(
        start=start,
        filter=event_stream_pb2.EventFilter(
            types=types, interview_ids=interview_ids, onboarding_statuses=statuses
        ),
    )


def event_json(event: events_pb2.Event) -> str:
    """One event as a line of protobuf's canonical JSON (camelCase names, enum names, 64-bit
    integers as strings, RFC 3339 timestamps)."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":"), ensure_ascii=False)


@contextlib.contextmanager
def event_span(event: events_pb2.Event, tracer=None) -> Iterator[object]:
    """Runs the body inside a consumer span whose parent is the gateway's ingest span, so that the
    trace that began with Incode's call continues here. Yields the span, or None without
    OpenTelemetry."""
    if trace is None or propagate is None:
        yield None
        return
    parent = propagate.extract(dict(event.trace_context))
    tracer = tracer or trace.get_tracer("incode-gateway-example-python")
    with tracer.start_as_current_span(
        f"process {events_pb2.EventType.Name(event.type)}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "incode-gateway",
            "messaging.operation.type": "process",
            "messaging.message.id": event.id,
            "incode_gateway.sequence": str(event.sequence),
        },
    ) as span:
        yield span


@dataclasses.dataclass
class Outcome:
    """How a subscription ended."""

    last_sequence: Optional[int] = None
    """The last sequence handled: the cursor to resume after."""
    reached_limit: bool = False
    """Whether ``max_events`` were handled; otherwise the gateway ended the stream."""


def consume(
    stub: event_stream_pb2_grpc.EventStreamServiceStub,
    request: event_stream_pb2.SubscribeRequest,
    on_event: Callable[[events_pb2.Event], None],
    *,
    on_caught_up: Callable[[int], None] = lambda sequence: None,
    on_gap: Callable[[int, int], None] = lambda first, last: None,
    max_events: Optional[int] = None,
    metadata: tuple = (),
) -> Outcome:
    """Streams the events of a subscription to ``on_event``, one at a time, until the stream
    ends or ``max_events`` were handled. ``metadata`` goes with the call (see
    ``call_metadata``). Raises ``grpc.RpcError`` when the call fails."""
    outcome = Outcome(reached_limit=max_events == 0)
    if outcome.reached_limit:
        return outcome
    handled = 0
    call = stub.Subscribe(request, metadata=metadata)
    try:
        for response in call:
            kind = response.WhichOneof("response")
            if kind == "event":
                with event_span(response.event):
                    on_event(response.event)
                outcome.last_sequence = response.event.sequence
                handled += 1
                if max_events is not None and handled >= max_events:
                    outcome.reached_limit = True
                    return outcome
            elif kind == "caught_up":
                on_caught_up(response.caught_up.sequence)
            elif kind == "gap":
                on_gap(response.gap.first_sequence, response.gap.last_sequence)
        return outcome
    finally:
        call.cancel()


def parse_enum(enum, text: str) -> int:
    """An enum value by its protobuf name, with or without the type's prefix
    (``ONBOARDING_STATUS_ONBOARDING_FINISHED`` or ``ONBOARDING_FINISHED``)."""
    names = enum.keys()
    prefix = names[0].removesuffix("UNSPECIFIED")
    for name in (text, prefix + text):
        if name in names:
            return enum.Value(name)
    raise argparse.ArgumentTypeError(f"unknown value {text!r}; one of {', '.join(names)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prints the gateway's events from the earliest stored one as JSON lines."
    )
    parser.add_argument("--addr", default=DEFAULT_ADDR, help=f"internal listener (default {DEFAULT_ADDR})")
    parser.add_argument("--ca", help="PEM CA certificate of the gateway's TLS certificate (turns TLS on)")
    parser.add_argument("--cert", help="PEM client certificate, for mutual TLS (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--tls-server-name", help="name to verify the gateway's certificate against")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE),
        help=f"subscriber bearer token (default ${TOKEN_VARIABLE}; prefer the variable)",
    )
    parser.add_argument(
        "--type",
        action="append",
        default=[],
        type=lambda text: parse_enum(events_pb2.EventType, text),
        help="an EventType, e.g. EVENT_TYPE_ONBOARDING_STATUS_CHANGED (repeatable)",
    )
    parser.add_argument("--interview-id", action="append", default=[], help="an Incode interviewId (repeatable)")
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        type=lambda text: parse_enum(events_pb2.OnboardingStatus, text),
        help="an OnboardingStatus, e.g. ONBOARDING_FINISHED (repeatable)",
    )
    parser.add_argument("--after", type=int, help="resume after this sequence (the last one processed)")
    parser.add_argument("--max-events", type=int, help="exit after this many events")
    args = parser.parse_args(argv)

    def print_event(event: events_pb2.Event) -> None:
        print(event_json(event), flush=True)

    try:
        channel = open_channel(
            args.addr,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
            server_name=args.tls_server_name,
        )
    except (OSError, ValueError) as error:
        print(f"cannot set up the connection: {error}", file=sys.stderr)
        return 2
    try:
        with channel:
            outcome = consume(
                event_stream_pb2_grpc.EventStreamServiceStub(channel),
                subscribe_request(args.type, args.interview_id, args.status, args.after),
                print_event,
                on_caught_up=lambda sequence: print(
                    f"caught up at sequence {sequence}; what follows is live", file=sys.stderr
                ),
                on_gap=lambda first, last: print(
                    f"events {first} to {last} were removed by retention", file=sys.stderr
                ),
                max_events=args.max_events,
                metadata=call_metadata(args.token),
            )
    except KeyboardInterrupt:
        return 0
    except grpc.RpcError as error:
        print(f"subscription failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if outcome.reached_limit:
        return 0
    resume = "" if outcome.last_sequence is None else f"; resume with --after {outcome.last_sequence}"
    print(f"the gateway ended the stream{resume}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
