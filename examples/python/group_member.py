#!/usr/bin/env python3
"""A consumer group member of incode-gateway's event stream, in Python, with grpcio.

Run several copies with the same ``--group``: each event goes to one of them, every event of one
interview to the same one, in order. Each event is handled, then acknowledged; an event that was
not acknowledged when its member went away is delivered again to another member, so handling
must tolerate seeing an event twice (its ``id`` and ``sequence`` identify it).

It connects like ``subscriber.py`` (``--ca``, ``--cert``, ``--key``, ``--token`` or the
``INCODE_GATEWAY_TOKEN`` variable)::

    INCODE_GATEWAY_TOKEN=... PYTHONPATH=gen/python python3 examples/python/group_member.py \\
        --addr gateway.internal:50051 --ca ca.pem --group billing
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

import grpc

from incode.gateway.v1 import event_stream_pb2, event_stream_pb2_grpc, events_pb2
from subscriber import (
    DEFAULT_ADDR,
    TOKEN_VARIABLE,
    call_metadata,
    event_json,
    event_span,
    open_channel,
)


def run_member(
    stub: event_stream_pb2_grpc.EventStreamServiceStub,
    group: str,
    handle: Callable[[events_pb2.Event], None],
    *,
    metadata: tuple = (),
    partitions: int = 0,
    max_events: Optional[int] = None,
    on_assignment: Callable[[event_stream_pb2.GroupAssignment], None] = lambda assignment: None,
) -> int:
    """Joins ``group`` and, for each event the gateway sends this member, calls ``handle`` and
    then acknowledges the event. Returns how many events were handled when the stream ends or
    ``max_events`` is reached. ``partitions`` sizes a group that does not exist yet."""
    call = stub.Subscribe(
        event_stream_pb2.SubscribeRequest(group=group, group_partitions=partitions),
        metadata=metadata,
    )
    member_id = ""
    handled = 0
    try:
        for response in call:
            kind = response.WhichOneof("response")
            if kind == "group_assignment":
                # The first message, and again whenever this member's partitions change.
                member_id = response.group_assignment.member_id
                on_assignment(response.group_assignment)
            elif kind == "event":
                with event_span(response.event):
                    handle(response.event)
                try:
                    stub.Ack(
                        event_stream_pb2.AckRequest(
                            group=group, member_id=member_id, sequence=response.event.sequence
                        ),
                        metadata=metadata,
                    )
                except grpc.RpcError as error:
                    if error.code() not in (
                        grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        raise
                    # The partition moved to another member (FAILED_PRECONDITION), or this
                    # member expired and is no longer one (PERMISSION_DENIED): the event goes to
                    # the partition's owner again, and this stream learns its new assignment.
                handled += 1
                if max_events is not None and handled >= max_events:
                    return handled
        return handled
    finally:
        call.cancel()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Handles a share of the gateway's events as a group member.")
    parser.add_argument("--addr", default=DEFAULT_ADDR, help=f"internal listener (default {DEFAULT_ADDR})")
    parser.add_argument("--group", required=True, help="the consumer group to join")
    parser.add_argument("--partitions", type=int, default=0, help="partitions of a group created now (default 16)")
    parser.add_argument("--ca", help="PEM CA certificate of the gateway's TLS certificate (turns TLS on)")
    parser.add_argument("--cert", help="PEM client certificate, for mutual TLS (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE),
        help=f"subscriber bearer token (default ${TOKEN_VARIABLE}; prefer the variable)",
    )
    parser.add_argument("--max-events", type=int, help="exit after this many events")
    args = parser.parse_args(argv)
    try:
        channel = open_channel(args.addr, ca_file=args.ca, cert_file=args.cert, key_file=args.key)
    except (OSError, ValueError) as error:
        print(f"cannot set up the connection: {error}", file=sys.stderr)
        return 2
    try:
        with channel:
            run_member(
                event_stream_pb2_grpc.EventStreamServiceStub(channel),
                args.group,
                lambda event: print(event_json(event), flush=True),
                metadata=call_metadata(args.token),
                partitions=args.partitions,
                max_events=args.max_events,
                on_assignment=lambda assignment: print(
                    f"member {assignment.member_id}: partitions {list(assignment.partitions)} "
                    f"of {assignment.partition_count}, {assignment.members} members",
                    file=sys.stderr,
                ),
            )
    except KeyboardInterrupt:
        return 0
    except grpc.RpcError as error:
        print(f"the group stream failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
