/**
 * Runs the real incode-gateway binary for the tests, on ephemeral loopback ports with a
 * temporary data directory and TLS on its internal listener, and plays Incode against it.
 */

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
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

/**
 * The environment for a child process: ours without any INCODE_GATEWAY_* variable (the caller's
 * gateway or token settings must not change what a test sees), plus `extra`.
 */
export function cleanEnvironment(
  extra: Readonly<Record<string, string>> = {},
): NodeJS.ProcessEnv {
  const environment: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("INCODE_GATEWAY_")) {
      environment[name] = value;
    }
  }
  return { ...environment, ...extra };
}

/** The gateway binary: $INCODE_GATEWAY_BIN, or the debug build under $CARGO_TARGET_DIR or target/. */
export function gatewayBinary(): string {
  if (process.env.INCODE_GATEWAY_BIN) {
    return process.env.INCODE_GATEWAY_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, "target");
  return path.join(target, "debug", "incode-gateway");
}

/** Throwaway TLS material and a subscriber, made with the openssl command line tool. */
export interface Tls {
  /** The directory holding the files; remove it when done. */
  dir: string;
  /** The CA that signed the gateway's certificate and the client certificate (PEM). */
  ca: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  /** A client certificate and key for the subscriber `typescript-example` (PEM). */
  clientCert: string;
  clientKey: string;
  clientCertFile: string;
  clientKeyFile: string;
  /** The gateway's --config file, with the subscriber. */
  configFile: string;
  /** The subscriber's token; the config file holds only its SHA-256 digest. */
  token: string;
}

/** Makes a CA, the gateway's certificate (localhost, 127.0.0.1), a client certificate and a config file. */
export async function makeTls(): Promise<Tls> {
  const dir = await mkdtemp(path.join(tmpdir(), "incode-gateway-ts-tls-"));
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
    "-subj", "/CN=incode-gateway test CA",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  const leaf = (name: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), extensions);
    openssl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
      "-set_serial", `0x${randomBytes(8).toString("hex")}`, "-days", "1",
      "-out", `${name}.pem`, "-extfile", `${name}.ext`);
  };
  leaf("localhost", "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  leaf("typescript-example", "basicConstraints=CA:FALSE\nsubjectAltName=DNS:typescript-example\nextendedKeyUsage=clientAuth\n");

  const token = randomBytes(32).toString("base64url");
  // What docs/internal-listener.md says: `printf %s "$TOKEN" | sha256sum`.
  const digest = createHash("sha256").update(token).digest("hex");
  writeFileSync(
    file("gateway.toml"),
    `[[subscribers]]
name = "typescript-example"
tokens = ["sha256:${digest}"]
consumers = ["typescript-example", "typescript-example-*"]
`,
  );
  return {
    dir,
    ca: readFileSync(file("ca.pem"), "utf8"),
    caFile: file("ca.pem"),
    certFile: file("localhost.pem"),
    keyFile: file("localhost.key"),
    clientCert: readFileSync(file("typescript-example.pem"), "utf8"),
    clientKey: readFileSync(file("typescript-example.key"), "utf8"),
    clientCertFile: file("typescript-example.pem"),
    clientKeyFile: file("typescript-example.key"),
    configFile: file("gateway.toml"),
    token,
  };
}

/** The flags that turn on TLS (and mutual TLS, with `mutual`) and the subscriber of `tls`. */
export function tlsFlags(tls: Tls, mutual = false): string[] {
  return [
    "--internal-tls-cert",
    tls.certFile,
    "--internal-tls-key",
    tls.keyFile,
    ...(mutual ? ["--internal-client-ca", tls.caFile] : []),
    "--config",
    tls.configFile,
  ];
}

export class Gateway {
  private constructor(
    private readonly child: ChildProcess,
    private readonly dataDir: string,
    /** Base URL of the public (webhook) listener. */
    readonly publicUrl: string,
    /** Base URL of the internal (gRPC) listener: https:// when it speaks TLS. */
    readonly grpcUrl: string,
  ) {}

  /** Starts the gateway with these extra flags and resolves once it logged its addresses. */
  static async start(flags: readonly string[] = []): Promise<Gateway> {
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
        ...flags,
      ],
      { stdio: ["ignore", "pipe", "inherit"], env: cleanEnvironment(GATEWAY_ENV) },
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
      const scheme = flags.includes("--internal-tls-cert") ? "https" : "http";
      return new Gateway(child, dataDir, `http://${publicAddr}`, `${scheme}://${internalAddr}`);
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
