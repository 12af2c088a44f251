/**
 * Runs the real incode-gateway binary for the tests, on ephemeral loopback ports with a
 * temporary data directory, and plays Incode against it.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (this file is compiled to examples/typescript/dist/test/). */
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

/**
 * Flags every test gateway is started with, besides its ports and data directory. The one place
 * to add a flag the gateway starts requiring.
 */
export const GATEWAY_FLAGS: readonly string[] = [
  "--log-format",
  "json",
  "--allow-unauthenticated-webhooks",
  // The trace test plays Incode's caller with a traceparent of its own and checks that the
  // event continues it; by default the gateway only links an incoming trace.
  "--trust-incoming-trace-context",
];

/**
 * Tracing on, so that events carry the W3C trace context of the webhook that brought them. The
 * collector address is a closed port: spans are dropped, quickly.
 */
export const GATEWAY_ENV: Readonly<Record<string, string>> = {
  RUST_LOG: "info",
  OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9",
  OTEL_EXPORTER_OTLP_TIMEOUT: "100",
  OTEL_METRICS_EXPORTER: "none",
};

/** The gateway binary: $INCODE_GATEWAY_BIN, or the debug build under $CARGO_TARGET_DIR or target/. */
export function gatewayBinary(): string {
  if (process.env.INCODE_GATEWAY_BIN) {
    return process.env.INCODE_GATEWAY_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, "target");
  return path.join(target, "debug", "incode-gateway");
}

export class Gateway {
  private constructor(
    private readonly child: ChildProcess,
    private readonly dataDir: string,
    /** Base URL of the public (webhook) listener. */
    readonly publicUrl: string,
    /** Base URL of the internal (gRPC) listener. */
    readonly grpcUrl: string,
  ) {}

  /** Starts the gateway and resolves once it logged the addresses it listens on. */
  static async start(): Promise<Gateway> {
    const dataDir = await mkdtemp(path.join(tmpdir(), "incode-gateway-ts-"));
    const child = spawn(
      gatewayBinary(),
      [
        "serve",
        "--public-addr",
        "127.0.0.1:0",
        "--internal-addr",
        "127.0.0.1:0",
        "--data-dir",
        dataDir,
        ...GATEWAY_FLAGS,
      ],
      { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...GATEWAY_ENV } },
    );
    const exited = once(child, "exit").then(([code]) => {
      throw new Error(`the gateway exited with ${String(code)} before listening`);
    });
    const listening = (async () => {
      if (child.stdout === null) {
        throw new Error("no stdout");
      }
      for await (const line of createInterface({ input: child.stdout })) {
        let record: { message?: string; public?: string; internal?: string };
        try {
          record = JSON.parse(line) as typeof record;
        } catch {
          continue;
        }
        if (record.message === "incode-gateway listening" && record.public && record.internal) {
          // Keep reading so that the gateway never blocks on a full pipe.
          child.stdout.resume();
          return { publicAddr: record.public, internalAddr: record.internal };
        }
      }
      throw new Error("the gateway closed its output before listening");
    })();
    try {
      const { publicAddr, internalAddr } = await Promise.race([listening, exited]);
      return new Gateway(child, dataDir, `http://${publicAddr}`, `http://${internalAddr}`);
    } catch (error) {
      child.kill("SIGKILL");
      await rm(dataDir, { recursive: true, force: true });
      throw error;
    }
  }

  /** Posts a notification as Incode does and checks that the gateway acknowledged it. */
  async notify(webhookPath: string, body: unknown, headers: Record<string, string> = {}): Promise<void> {
    const response = await fetch(`${this.publicUrl}${webhookPath}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
    const answer = await response.text();
    if (response.status !== 200 || answer !== '{"success":true}') {
      throw new Error(`${webhookPath} answered ${response.status} ${answer}`);
    }
  }

  /** Stops the gateway (SIGTERM) and removes its data. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = once(this.child, "exit");
      this.child.kill("SIGTERM");
      await exited;
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
