"""The Python group member against the real gateway: two members share a group's events, each
event handled once, each interview by one member, in order; the example program runs as a
member."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time

import grpc
import pytest

from conftest import HERE, PATIENCE

GROUP = "python-example-workers"


@pytest.fixture(scope="module")
def group_member(stubs_dir):
    sys.path.insert(0, str(HERE))
    import group_member

    return group_member


class Member(threading.Thread):
    """A group member running the example's ``run_member`` on its own channel."""

    def __init__(self, name, group_member, subscriber, gateway, tls):
        super().__init__(daemon=True)
        self.name_ = name
        self.channel = subscriber.open_channel(gateway.grpc_addr, ca_file=tls.ca_file)
        self.stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(self.channel)
        self.metadata = subscriber.call_metadata(tls.token)
        self.group_member = group_member
        self.handled = []
        self.assignment = None
        self.error = None

    def run(self):
        try:
            self.group_member.run_member(
                self.stub,
                GROUP,
                self.handled.append,
                metadata=self.metadata,
                partitions=4,
                on_assignment=self._assigned,
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def _assigned(self, assignment):
        self.assignment = assignment

    def stop(self):
        self.channel.close()
        self.join(timeout=PATIENCE)


def wait_for(condition, what):
    deadline = time.monotonic() + PATIENCE * 2
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def interview_of(event):
    return event.onboarding_status_changed.interview_id


def test_two_members_share_the_group_by_interview(group_member, subscriber, gateway, tls):
    members = [Member(name, group_member, subscriber, gateway, tls) for name in ("a", "b")]
    for member in members:
        member.start()
    try:

        def settled():
            assignments = [m.assignment for m in members]
            if any(a is None or a.members != 2 for a in assignments):
                return False
            owned = [p for a in assignments for p in a.partitions]
            return sorted(owned) == [0, 1, 2, 3]

        wait_for(settled, "the group to settle")
        interviews = [secrets.token_hex(12) for _ in range(8)]
        for round in range(5):
            for interview in interviews:
                gateway.notify(
                    "/webhooks/incode/onboarding-status",
                    {"interviewId": interview, "onboardingStatus": "UNKNOWN", "round": round},
                )

        def ours(member):
            return [e for e in member.handled if interview_of(e) in interviews]

        wait_for(lambda: sum(len(ours(m)) for m in members) >= 40, "every event to be handled")
    finally:
        for member in members:
            member.stop()
    for member in members:
        assert member.error is None, member.error

    handled = {m.name_: ours(m) for m in members}
    sequences = [e.sequence for events in handled.values() for e in events]
    assert len(sequences) == len(set(sequences)) == 40, "an event was handled twice"
    owner = {}
    for name, events in handled.items():
        last = {}
        for event in events:
            interview = interview_of(event)
            assert owner.setdefault(interview, name) == name, f"{interview} went to two members"
            assert event.sequence > last.get(interview, 0), "out of order within an interview"
            last[interview] = event.sequence
    assert len(owner) == 8


def test_the_example_program_handles_its_share(gateway, tls, stubs_dir):
    gateway.notify(
        "/webhooks/incode/onboarding-status",
        {"interviewId": secrets.token_hex(12), "onboardingStatus": "UNKNOWN"},
    )
    env = {**os.environ, "PYTHONPATH": f"{stubs_dir}{os.pathsep}{HERE}", "INCODE_GATEWAY_TOKEN": tls.token}
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "group_member.py"),
            "--addr",
            gateway.grpc_addr,
            "--ca",
            tls.ca_file,
            "--group",
            "python-example-cli-" + secrets.token_hex(4),
            "--max-events",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE * 2,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout.splitlines()[0])
    assert event["sequence"] == "1"
    assert "member " in result.stderr and "partitions" in result.stderr


def test_groups_are_authorized_like_consumers(subscriber, gateway, tls):
    with subscriber.open_channel(gateway.grpc_addr, ca_file=tls.ca_file) as channel:
        stub = subscriber.event_stream_pb2_grpc.EventStreamServiceStub(channel)
        request = subscriber.event_stream_pb2.SubscribeRequest(group="billing")
        call = stub.Subscribe(request, metadata=subscriber.call_metadata(tls.token), timeout=PATIENCE)
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(call))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "billing" in raised.value.details()
        ack = subscriber.event_stream_pb2.AckRequest(group="billing", member_id="x", sequence=1)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Ack(ack, metadata=subscriber.call_metadata(tls.token))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
