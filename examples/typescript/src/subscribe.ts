/**
 * A subscriber to incode-gateway's event stream, in TypeScript, over Connect's gRPC transport
 * (HTTP/2) with the client that protoc-gen-es generates from `proto/`.
 *
 * It subscribes from the earliest stored event (or after a sequence it already processed) with a
 * filter, prints every event as one line of protobuf's canonical JSON, and handles each event
 * inside a span that continues the trace recorded in `Event.traceContext`, when
 * `@opentelemetry/api` is installed and the application registered a tracer provider and the
 * W3C propagator.
 *
 * An `https://` address connects over TLS (`--ca` to trust the CA that signed the gateway's
 * certificate, `--cert` and `--key` for mutual TLS); a subscriber's token (`--token`, better the
 * `INCODE_GATEWAY_TOKEN` environment variable) goes with every call.
 *
 *   INCODE_GATEWAY_TOKEN=... npm run subscribe -- --addr https://gateway.internal:50051 \
 *     --ca ca.pem --type EVENT_TYPE_ONBOARDING_STATUS_CHANGED --status ONBOARDING_FINISHED
 */

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";

import { create, toJsonString, type DescEnum } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import {
  EventFilterSchema,
  EventStreamService,
  StartPositionSchema,
  SubscribeRequestSchema,
  type SubscribeRequest,
  type SubscribeResponse,
} from "../gen/es/incode/gateway/v1/event_stream_pb.js";
import {
  EventSchema,
  EventType,
  EventTypeSchema,
  OnboardingStatus,
  OnboardingStatusSchema,
  type Event,
} from "../gen/es/incode/gateway/v1/events_pb.js";

/** The gateway's `EventStreamService` client. */
export type EventStreamClient = Client<typeof EventStreamService>;

/** A client for the gateway's internal listener, and a way to close its HTTP/2 connection. */
export interface Connection {
  client: EventStreamClient;
  close(): void;
}

/** How to reach the gateway: TLS material (PEM contents) and the subscriber's token. */
export interface ConnectOptions {
  /** CA certificate(s) that signed the gateway's certificate; the system's roots without it. */
  ca?: string | Buffer;
  /** Client certificate, for mutual TLS (with `key`). */
  cert?: string | Buffer;
  /** Private key of `cert`. */
  key?: string | Buffer;
  /** The name to verify the gateway's certificate against, when it is not the URL's host. */
  serverName?: string;
  /** A subscriber's bearer token, sent as `authorization: Bearer <token>` with every call. */
  token?: string;
}

/** Adds the subscriber's token to every call. */
function bearer(token: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

/**
 * Connects (lazily) to the gateway's internal listener: `https://host:50051` over TLS,
 * `http://host:50051` in plain text.
 */
export function connect(baseUrl: string, options: ConnectOptions = {}): Connection {
  const tls = new URL(baseUrl).protocol === "https:";
  const tlsOptions = {
    ...(options.ca !== undefined && { ca: options.ca }),
    ...(options.cert !== undefined && { cert: options.cert }),
    ...(options.key !== undefined && { key: options.key }),
    ...(options.serverName !== undefined && { servername: options.serverName }),
  };
  if (!tls && Object.keys(tlsOptions).length > 0) {
    throw new Error(`TLS options need an https:// address, not ${baseUrl}`);
  }
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new Error("a client certificate needs both cert and key");
  }
  const sessionManager = new Http2SessionManager(baseUrl, undefined, tls ? tlsOptions : undefined);
  const interceptors = options.token === undefined ? [] : [bearer(options.token)];
  return {
    client: createClient(
      EventStreamService,
      createGrpcTransport({ baseUrl, sessionManager, interceptors }),
    ),
    close: () => sessionManager.abort(),
  };
}

/** What to subscribe to. Empty lists select everything. */
export interface Selection {
  types?: EventType[];
  interviewIds?: string[];
  statuses?: OnboardingStatus[];
  /** Resume after this sequence (the last one processed); from the earliest event when unset. */
  afterSequence?: bigint;
}

/** The `Subscribe` request for a selection. */
export function subscribeRequest(selection: Selection): SubscribeRequest {
  const start =
    selection.afterSequence === undefined
      ? create(StartPositionSchema, { position: { case: "earliest", value: {} } })
      : create(StartPositionSchema, {
          position: { case: "afterSequence", value: selection.afterSequence },
        });
  return create(SubscribeRequestSchema, {
    start,
    filter: create(EventFilterSchema, {
      types: selection.types ?? [],
      interviewIds: selection.interviewIds ?? [],
      onboardingStatuses: selection.statuses ?? [],
    }),
  });
}

/** One event as a line of protobuf's canonical JSON. */
export function eventJson(event: Event): string {
  return toJsonString(EventSchema, event);
}

type OpenTelemetry = typeof import("@opentelemetry/api");

// OpenTelemetry is optional: without it, events are handled without a span.
const otel: OpenTelemetry | undefined = await import("@opentelemetry/api").catch(() => undefined);

/**
 * Runs `handle` for `event` inside a consumer span whose parent is the gateway's ingest span, so
 * that the trace that began with Incode's call continues here.
 */
export async function withEventSpan<T>(event: Event, handle: () => T | Promise<T>): Promise<T> {
  if (otel === undefined) {
    return handle();
  }
  const api = otel;
  const parent = api.propagation.extract(api.ROOT_CONTEXT, event.traceContext);
  const tracer = api.trace.getTracer("incode-gateway-example-typescript");
  const attributes = {
    "messaging.system": "incode-gateway",
    "messaging.operation.type": "process",
    "messaging.message.id": event.id,
    "incode_gateway.sequence": event.sequence.toString(),
  };
  return tracer.startActiveSpan(
    `process ${EventTypeSchema.value[event.type]?.name ?? "event"}`,
    { kind: api.SpanKind.CONSUMER, attributes },
    parent,
    async (span) => {
      try {
        return await handle();
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: api.SpanStatusCode.ERROR });
        throw error;
      } finally {
        span.end();
      }
    },
  );
}

/** Where a subscription reports what is not an event. */
export interface Notes {
  caughtUp(sequence: bigint): void;
  gap(first: bigint, last: bigint): void;
}

/** How a subscription ended. */
export interface Outcome {
  /** The last sequence handled (the cursor to resume after), if any. */
  lastSequence: bigint | undefined;
  /** Whether `maxEvents` were handled; otherwise the gateway ended the stream. */
  reachedLimit: boolean;
}

/**
 * Streams the events of a subscription to `onEvent`, one at a time, until the stream ends or
 * `maxEvents` were handled. Aborting `signal` ends the subscription with a `Canceled` error.
 */
export async function consume(
  client: EventStreamClient,
  request: SubscribeRequest,
  onEvent: (event: Event) => void | Promise<void>,
  options: { notes?: Notes; maxEvents?: number; signal?: AbortSignal } = {},
): Promise<Outcome> {
  const outcome: Outcome = { lastSequence: undefined, reachedLimit: options.maxEvents === 0 };
  if (outcome.reachedLimit) {
    return outcome;
  }
  let handled = 0;
  for await (const message of client.subscribe(request, { signal: options.signal })) {
    const response: SubscribeResponse["response"] = message.response;
    switch (response.case) {
      case "event": {
        const event = response.value;
        await withEventSpan(event, () => onEvent(event));
        outcome.lastSequence = event.sequence;
        handled += 1;
        if (options.maxEvents !== undefined && handled >= options.maxEvents) {
          outcome.reachedLimit = true;
          return outcome;
        }
        break;
      }
      case "caughtUp":
        options.notes?.caughtUp(response.value.sequence);
        break;
      case "gap":
        options.notes?.gap(response.value.firstSequence, response.value.lastSequence);
        break;
      case "heartbeat":
      case undefined:
        break;
    }
  }
  return outcome;
}

/** Reads an enum value by its protobuf name, with or without the type prefix. */
export function parseEnum<T extends number>(schema: DescEnum, text: string): T {
  const value = schema.values.find(
    (v) => v.name === text || v.localName === text || v.name === `${schema.sharedPrefix ?? ""}${text}`,
  );
  if (value === undefined) {
    const names = schema.values.map((v) => v.name).join(", ");
    throw new Error(`unknown ${schema.name} ${JSON.stringify(text)}; one of ${names}`);
  }
  return value.number as T;
}

function usage(): string {
  return `usage: subscribe [--addr URL] [--ca FILE] [--cert FILE --key FILE] [--tls-server-name NAME]
                 [--token TOKEN] [--type TYPE]... [--interview-id ID]... [--status STATUS]...
                 [--after SEQUENCE] [--max-events N]

Prints the gateway's events from the earliest stored one (or after SEQUENCE) as JSON lines.
  --addr          the gateway's internal listener: https:// over TLS (default http://127.0.0.1:50051)
  --ca            PEM CA certificate that signed the gateway's certificate (https:// only)
  --cert, --key   PEM client certificate and key, for mutual TLS
  --tls-server-name  the name to verify the gateway's certificate against
  --token         a subscriber's bearer token (default $INCODE_GATEWAY_TOKEN; prefer the variable)
  --type          an EventType, e.g. EVENT_TYPE_ONBOARDING_STATUS_CHANGED
  --interview-id  an Incode interviewId
  --status        an OnboardingStatus, e.g. ONBOARDING_STATUS_ONBOARDING_FINISHED or ONBOARDING_FINISHED
  --after         resume after this sequence (the last one processed)
  --max-events    exit after this many events
`;
}

/** The command line program; resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        addr: { type: "string", default: "http://127.0.0.1:50051" },
        ca: { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        "tls-server-name": { type: "string" },
        token: { type: "string" },
        type: { type: "string", multiple: true, default: [] },
        "interview-id": { type: "string", multiple: true, default: [] },
        status: { type: "string", multiple: true, default: [] },
        after: { type: "string" },
        "max-events": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${usage()}`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(usage());
    return 0;
  }

  let request: SubscribeRequest;
  let maxEvents: number | undefined;
  try {
    request = subscribeRequest({
      types: args.type.map((t) => parseEnum<EventType>(EventTypeSchema, t)),
      interviewIds: args["interview-id"],
      statuses: args.status.map((s) => parseEnum<OnboardingStatus>(OnboardingStatusSchema, s)),
      afterSequence: args.after === undefined ? undefined : BigInt(args.after),
    });
    maxEvents = args["max-events"] === undefined ? undefined : Number.parseInt(args["max-events"], 10);
    if (maxEvents !== undefined && !(maxEvents >= 0)) {
      throw new Error(`--max-events must be a number, got ${args["max-events"]}`);
    }
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    return 2;
  }

  let connection: Connection;
  try {
    connection = connect(args.addr, {
      ca: args.ca === undefined ? undefined : readFileSync(args.ca),
      cert: args.cert === undefined ? undefined : readFileSync(args.cert),
      key: args.key === undefined ? undefined : readFileSync(args.key),
      serverName: args["tls-server-name"],
      token: args.token ?? (process.env.INCODE_GATEWAY_TOKEN || undefined),
    });
  } catch (error) {
    process.stderr.write(`cannot set up the connection: ${(error as Error).message}\n`);
    return 2;
  }
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    const outcome = await consume(
      connection.client,
      request,
      (event) => {
        process.stdout.write(`${eventJson(event)}\n`);
      },
      {
        maxEvents,
        signal: abort.signal,
        notes: {
          caughtUp: (sequence) =>
            process.stderr.write(`caught up at sequence ${sequence}; what follows is live\n`),
          gap: (first, last) =>
            process.stderr.write(`events ${first} to ${last} were removed by retention\n`),
        },
      },
    );
    if (outcome.reachedLimit) {
      return 0;
    }
    const resume = outcome.lastSequence === undefined ? "" : `; resume with --after ${outcome.lastSequence}`;
    process.stderr.write(`the gateway ended the stream${resume}\n`);
    return 1;
  } catch (error) {
    const connectError = ConnectError.from(error);
    if (connectError.code === Code.Canceled && abort.signal.aborted) {
      return 0;
    }
    process.stderr.write(`subscription failed: ${connectError.message}\n`);
    return 1;
  } finally {
    connection.close();
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2));
}
