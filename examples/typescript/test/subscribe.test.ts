/**
 * The TypeScript client against the real gateway: webhooks posted as Incode posts them arrive,
 * every field intact, through the generated client and through the example program, over TLS
 * with a subscriber token (or a client certificate, under mutual TLS).
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { context, propagation, trace, SpanKind } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";

import { AckRequestSchema } from "../gen/es/incode/gateway/v1/event_stream_pb.js";
import {
  EventType,
  OnboardingStatus,
  type Event,
} from "../gen/es/incode/gateway/v1/events_pb.js";
import {
  connect,
  subscribeRequest,
  withEventSpan,
  type Connection,
  type EventStreamClient,
} from "../src/subscribe.js";
import { Gateway, makeTls, tlsFlags, type Tls } from "./gateway.js";

const run = promisify(execFile);
const SUBSCRIBE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../src/subscribe.js");

/** A fresh Incode-like session id, so that tests sharing a gateway never see each other's events. */
function interviewId(): string {
  return randomBytes(12).toString("hex");
}

/** Every event of a subscription that starts in the past, up to `caughtUp`. */
async function storedEvents(client: EventStreamClient, request: ReturnType<typeof subscribeRequest>): Promise<Event[]> {
  const abort = new AbortController();
  const events: Event[] = [];
  const timer = setTimeout(() => abort.abort(), 10_000);
  try {
    for await (const message of client.subscribe(request, { signal: abort.signal })) {
      if (message.response.case === "event") {
        events.push(message.response.value);
      } else if (message.response.case === "caughtUp") {
        return events;
      }
    }
    throw new Error("the stream ended before caught_up");
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

type Payloads = { [P in Event["payload"] as NonNullable<P["case"]>]: NonNullable<P["value"]> };

/** The payload of an event, which must be of `kind`. */
function payload<K extends keyof Payloads>(event: Event, kind: K): Payloads[K] {
  assert.equal(event.payload.case, kind);
  return event.payload.value as Payloads[K];
}

/** Whether `error` is a gRPC error with this code. */
function hasCode(code: Code): (error: unknown) => boolean {
  return (error) => {
    assert.equal(ConnectError.from(error).code, code, String(error));
    return true;
  };
}

describe("TypeScript client", () => {
  let tls: Tls;
  let gateway: Gateway;
  let connection: Connection;
  let client: EventStreamClient;

  before(async () => {
    tls = await makeTls();
    gateway = await Gateway.start(tlsFlags(tls));
    connection = connect(gateway.grpcUrl, { ca: tls.ca, token: tls.token });
    client = connection.client;
  });

  after(async () => {
    connection?.close();
    await gateway?.stop();
    if (tls !== undefined) {
      await rm(tls.dir, { recursive: true, force: true });
    }
  });

  test("receives every notification with every field intact", async () => {
    const [a, b, c, other] = [interviewId(), interviewId(), interviewId(), interviewId()];
    const startedAt = Date.now();
    await gateway.notify("/webhooks/incode/onboarding-status", {
      interviewId: a,
      externalId: "customer-42",
      onboardingStatus: "ONBOARDING_FINISHED",
      flowId: "flow-7",
      score: 97.5,
      tags: ["kyc", 3, true, null],
      device: { os: "android", rooted: false },
    });
    await gateway.notify("/webhooks/incode/onboarding-status", {
      interviewId: a,
      onboardingStatus: "SOMETHING_NEW",
    });
    await gateway.notify("/webhooks/incode/watchlist-updated", {
      interviewId: b,
      ref: "1683042533-abc",
      search_id: "d2e1f",
      clientId: "acme",
    });
    const documentExpired = JSON.stringify({ interviewId: c, document: { type: "passport" } });
    const response = await fetch(`${gateway.publicUrl}/webhooks/incode/document-expired`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: documentExpired,
    });
    assert.equal(response.status, 200);
    await gateway.notify("/webhooks/incode/onboarding-status", {
      interviewId: other,
      onboardingStatus: "ONBOARDING_FINISHED",
    });

    const events = await storedEvents(client, subscribeRequest({ interviewIds: [a, b, c] }));

    assert.equal(events.length, 4, "the filter keeps exactly the four events of a, b and c");
    for (const [index, event] of events.entries()) {
      assert.ok(event.sequence > 0n);
      if (index > 0) {
        assert.ok(event.sequence > events[index - 1]!.sequence, "in sequence order");
      }
      assert.match(event.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.match(event.traceContext.traceparent ?? "", /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
      assert.ok(event.receivedAt !== undefined);
      const receivedAt = timestampDate(event.receivedAt).getTime();
      assert.ok(receivedAt >= startedAt - 5_000 && receivedAt <= Date.now() + 5_000);
    }
    const [finished, unknownStatus, watchlist, unrecognized] = events as [Event, Event, Event, Event];

    assert.equal(finished.type, EventType.ONBOARDING_STATUS_CHANGED);
    assert.deepEqual(
      { ...payload(finished, "onboardingStatusChanged") },
      {
        $typeName: "incode.gateway.v1.OnboardingStatusChanged",
        interviewId: a,
        externalId: "customer-42",
        onboardingStatus: OnboardingStatus.ONBOARDING_FINISHED,
        onboardingStatusRaw: "ONBOARDING_FINISHED",
        additionalFields: {
          flowId: "flow-7",
          score: 97.5,
          tags: ["kyc", 3, true, null],
          device: { os: "android", rooted: false },
        },
      },
    );

    const unknown = payload(unknownStatus, "onboardingStatusChanged");
    assert.equal(unknown.interviewId, a);
    assert.equal(unknown.externalId, undefined, "externalId stays absent");
    assert.equal(unknown.onboardingStatus, OnboardingStatus.UNSPECIFIED);
    assert.equal(unknown.onboardingStatusRaw, "SOMETHING_NEW");
    assert.deepEqual(unknown.additionalFields, {});

    assert.equal(watchlist.type, EventType.WATCHLIST_UPDATED);
    const updated = payload(watchlist, "watchlistUpdated");
    assert.equal(updated.interviewId, b);
    assert.equal(updated.ref, "1683042533-abc");
    assert.equal(updated.searchId, "d2e1f");
    assert.deepEqual(updated.additionalFields, { clientId: "acme" });

    assert.equal(unrecognized.type, EventType.UNRECOGNIZED_NOTIFICATION);
    const kept = payload(unrecognized, "unrecognizedNotification");
    assert.equal(kept.kind, "document-expired");
    assert.equal(kept.rawJson, documentExpired);
    assert.equal(kept.interviewId, c);
  });

  test("the example program prints canonical JSON lines, filtered", async () => {
    const id = interviewId();
    await gateway.notify("/webhooks/incode/onboarding-status", {
      interviewId: id,
      onboardingStatus: "ID_VALIDATION_FINISHED",
    });
    await gateway.notify("/webhooks/incode/onboarding-status", {
      interviewId: id,
      externalId: "customer-7",
      onboardingStatus: "ONBOARDING_FINISHED",
      flowId: "flow-1",
    });

    const { stdout } = await run(
      process.execPath,
      [
        SUBSCRIBE,
        ...["--addr", gateway.grpcUrl, "--ca", tls.caFile],
        ...["--interview-id", id, "--status", "ONBOARDING_FINISHED", "--max-events", "1"],
      ],
      { timeout: 10_000, env: { ...process.env, INCODE_GATEWAY_TOKEN: tls.token } },
    );

    const lines = stdout.trimEnd().split("\n");
    assert.equal(lines.length, 1);
    const json = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(typeof json.sequence, "string", "uint64 is a JSON string");
    assert.match(json.receivedAt as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    assert.equal(json.type, "EVENT_TYPE_ONBOARDING_STATUS_CHANGED");
    assert.deepEqual(json.onboardingStatusChanged, {
      interviewId: id,
      externalId: "customer-7",
      onboardingStatus: "ONBOARDING_STATUS_ONBOARDING_FINISHED",
      onboardingStatusRaw: "ONBOARDING_FINISHED",
      additionalFields: { flowId: "flow-1" },
    });
  });

  test("the example program fails clearly when the gateway is unreachable", async () => {
    await assert.rejects(
      run(process.execPath, [SUBSCRIBE, "--addr", "http://127.0.0.1:1"], { timeout: 10_000 }),
      (error: { code?: number; stderr?: string }) => {
        assert.equal(error.code, 1);
        assert.match(error.stderr ?? "", /subscription failed/);
        return true;
      },
    );
  });

  test("the subscriber continues the trace of the webhook", async () => {
    // Incode's call arrives inside a trace (here: one the test makes up).
    const traceId = randomBytes(16).toString("hex");
    const id = interviewId();
    await gateway.notify(
      "/webhooks/incode/onboarding-status",
      { interviewId: id, onboardingStatus: "ONBOARDING_FINISHED" },
      { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` },
    );
    const [event] = await storedEvents(client, subscribeRequest({ interviewIds: [id] }));
    assert.ok(event !== undefined);
    // The gateway's ingest span, a child of Incode's call, is what the event names.
    const [, eventTraceId, ingestSpanId] = (event.traceContext.traceparent ?? "").split("-");
    assert.equal(eventTraceId, traceId);

    // What an application's OpenTelemetry setup (e.g. the Node SDK) registers.
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    assert.ok(context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable()));
    assert.ok(trace.setGlobalTracerProvider(provider));
    assert.ok(propagation.setGlobalPropagator(new W3CTraceContextPropagator()));
    try {
      const active = await withEventSpan(event, () => trace.getActiveSpan()?.spanContext().traceId);

      assert.equal(active, traceId, "the handler runs inside the same trace");
      const [span] = exporter.getFinishedSpans();
      assert.ok(span !== undefined);
      assert.equal(span.spanContext().traceId, traceId);
      assert.equal(span.parentSpanContext?.spanId, ingestSpanId);
      assert.equal(span.parentSpanContext?.isRemote, true);
      assert.equal(span.kind, SpanKind.CONSUMER);
      assert.equal(span.name, "process EVENT_TYPE_ONBOARDING_STATUS_CHANGED");
      assert.equal(span.attributes["incode_gateway.sequence"], event.sequence.toString());
      assert.equal(span.attributes["messaging.message.id"], event.id);
    } finally {
      trace.disable();
      propagation.disable();
      context.disable();
      await provider.shutdown();
    }
  });

  test("a token is required, and authorizes its own consumers only", async () => {
    for (const token of [undefined, "not-the-token-" + randomBytes(8).toString("hex")]) {
      const anonymous = connect(gateway.grpcUrl, { ca: tls.ca, token });
      try {
        await assert.rejects(
          storedEvents(anonymous.client, subscribeRequest({})),
          hasCode(Code.Unauthenticated),
        );
      } finally {
        anonymous.close();
      }
    }

    const own = await client.ack(create(AckRequestSchema, { consumer: "typescript-example-eu", sequence: 0n }));
    assert.equal(own.sequence, 0n);
    await assert.rejects(
      client.ack(create(AckRequestSchema, { consumer: "billing", sequence: 0n })),
      hasCode(Code.PermissionDenied),
    );
  });

  test("a plaintext client is not served", async () => {
    const plaintext = connect(gateway.grpcUrl.replace("https:", "http:"), { token: tls.token });
    try {
      await assert.rejects(storedEvents(plaintext.client, subscribeRequest({})));
    } finally {
      plaintext.close();
    }
  });

  test("mutual TLS: a client certificate is required, and the example program presents one", async () => {
    const mutual = await Gateway.start(tlsFlags(tls, true));
    try {
      const id = interviewId();
      await mutual.notify("/webhooks/incode/onboarding-status", {
        interviewId: id,
        onboardingStatus: "ONBOARDING_FINISHED",
      });
      const withoutCertificate = connect(mutual.grpcUrl, { ca: tls.ca, token: tls.token });
      try {
        await assert.rejects(
          storedEvents(withoutCertificate.client, subscribeRequest({})),
          hasCode(Code.Unauthenticated),
        );
      } finally {
        withoutCertificate.close();
      }

      const { stdout } = await run(
        process.execPath,
        [
          SUBSCRIBE,
          ...["--addr", mutual.grpcUrl, "--ca", tls.caFile],
          ...["--cert", tls.clientCertFile, "--key", tls.clientKeyFile],
          ...["--interview-id", id, "--max-events", "1"],
        ],
        { timeout: 10_000 },
      );
      const json = JSON.parse(stdout) as { onboardingStatusChanged: { interviewId: string } };
      assert.equal(json.onboardingStatusChanged.interviewId, id);
    } finally {
      await mutual.stop();
    }
  });
});
