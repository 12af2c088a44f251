"""Fixtures: stubs generated from proto/ with grpcio-tools, throwaway TLS certificates, and the
real gateway binary running on ephemeral loopback ports with a temporary data directory, TLS on
its internal listener and one subscriber with a token."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import ipaddress
import json
import os
import pathlib
import queue
import secrets
import subprocess
import sys
import threading
import urllib.request
from typing import Optional

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO = REPO / "proto"

# Flags every test gateway is started with, besides its ports and data directory. The one place
# to add a flag the gateway starts requiring.
# The trace test plays Incode's caller with a traceparent of its own and checks that the event
# continues it; by default the gateway only links an incoming trace.
GATEWAY_FLAGS = [
    "--log-format",
    "json",
    "--allow-unauthenticated-webhooks",
    "--trust-incoming-trace-context",
]

# Tracing on, so that events carry the W3C trace context of the webhook that brought them. The
# collector address is a closed port: spans are dropped, quickly.
GATEWAY_ENV = {
    "RUST_LOG": "info",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
    "OTEL_METRICS_EXPORTER": "none",
}

# How long to wait for something that should happen promptly.
PATIENCE = 10


def clean_environment(**extra: str) -> dict:
    """The environment for a child process: ours without any INCODE_GATEWAY_* variable (the
    caller's gateway or token settings must not change what a test sees), plus ``extra``."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("INCODE_GATEWAY_")
    }
    return {**environment, **extra}


def gateway_binary() -> pathlib.Path:
    """$INCODE_GATEWAY_BIN, or the debug build under $CARGO_TARGET_DIR or target/."""
    if os.environ.get("INCODE_GATEWAY_BIN"):
        return pathlib.Path(os.environ["INCODE_GATEWAY_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    return target / "debug" / "incode-gateway"


@pytest.fixture(scope="session")
def stubs_dir(tmp_path_factory) -> pathlib.Path:
    """Generates the Python stubs from proto/, as a Python team would, and puts them on sys.path."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = str(pathlib.Path(protoc.__file__).parent / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO}",
            f"--proto_path={well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
    )
    assert status == 0, "generating the stubs failed"
    sys.path.insert(0, str(out))
    return out


@dataclasses.dataclass
class Tls:
    """The gateway's TLS files and the test subscriber's credentials."""

    ca_file: str
    """The CA that signed the gateway's certificate (and the client certificate)."""
    cert_file: str
    key_file: str
    client_cert_file: str
    """A client certificate for the subscriber `python-example`."""
    client_key_file: str
    config_file: str
    """The gateway's --config file with the subscriber."""
    token: str
    """The subscriber's token; the config file holds only its SHA-256 digest."""


def _certificate(subject: str, issuer_key, issuer_name, *, ca=False, sans=(), client=False):
    """A certificate for a new key, signed by ``issuer_key`` (itself when None); returns both."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    return certificate, key


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> Tls:
    """A CA, the gateway's certificate for localhost and 127.0.0.1, a client certificate, and a
    config file with the subscriber `python-example` whose token is stored as a digest."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = tmp_path_factory.mktemp("tls")
    ca, ca_key = _certificate("incode-gateway test CA", None, None, ca=True)
    server, server_key = _certificate(
        "localhost",
        ca_key,
        ca.subject,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = _certificate(
        "python-example", ca_key, ca.subject, sans=[x509.DNSName("python-example")], client=True
    )

    def write(name: str, data: bytes) -> str:
        path = out / name
        path.write_bytes(data)
        return str(path)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    token = secrets.token_urlsafe(32)
    # What docs/internal-listener.md says: `printf %s "$TOKEN" | sha256sum`.
    digest = hashlib.sha256(token.encode()).hexdigest()
    config = f"""
[[subscribers]]
name = "python-example"
tokens = ["sha256:{digest}"]
consumers = ["python-example", "python-example-*"]
"""
    return Tls(
        ca_file=write("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        cert_file=write("server.pem", server.public_bytes(serialization.Encoding.PEM)),
        key_file=write("server.key", pem_key(server_key)),
        client_cert_file=write("client.pem", client.public_bytes(serialization.Encoding.PEM)),
        client_key_file=write("client.key", pem_key(client_key)),
        config_file=write("gateway.toml", config.encode()),
        token=token,
    )


@pytest.fixture(scope="session")
def subscriber(stubs_dir):
    """The example module, importable once the stubs exist."""
    sys.path.insert(0, str(HERE))
    return importlib.import_module("subscriber")


class Gateway:
    """The gateway binary, started with ``serve`` on ephemeral ports."""

    def __init__(self, data_dir: pathlib.Path, flags: list):
        binary = gateway_binary()
        if not binary.exists():
            pytest.fail(f"{binary} does not exist: build it with `cargo build` first")
        self.process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--public-addr",
                "127.0.0.1:0",
                "--internal-addr",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                *GATEWAY_FLAGS,
                *flags,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_environment(**GATEWAY_ENV),
        )
        lines: queue.Queue = queue.Queue()
        # Reads the gateway's log for as long as it runs, so that it never blocks on a full pipe.
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=PATIENCE)
            except queue.Empty:
                self.stop()
                pytest.fail("the gateway did not report its addresses in time")
            if line is None:
                pytest.fail(f"the gateway exited with {self.process.wait()} before listening")
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "incode-gateway listening":
                self.public_url = f"http://{record['public']}"
                self.grpc_addr = record["internal"]
                return

    def _pump(self, lines: queue.Queue) -> None:
        for line in self.process.stdout:
            lines.put(line)
        lines.put(None)

    def post(self, path: str, body: bytes, headers: Optional[dict] = None) -> tuple[int, bytes]:
        """Posts a JSON body as Incode does; returns the status and the answer."""
        request = urllib.request.Request(
            self.public_url + path,
            data=body,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=PATIENCE) as response:
            return response.status, response.read()

    def notify(self, path: str, notification: dict, headers: Optional[dict] = None) -> None:
        """Posts a notification and checks that the gateway acknowledged it."""
        status, answer = self.post(path, json.dumps(notification).encode(), headers)
        assert (status, json.loads(answer)) == (200, {"success": True})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tls):
    """The gateway with TLS on its internal listener and the subscriber of ``tls``."""
    flags = [
        "--internal-tls-cert",
        tls.cert_file,
        "--internal-tls-key",
        tls.key_file,
        "--config",
        tls.config_file,
    ]
    gateway = Gateway(tmp_path_factory.mktemp("data"), flags)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def mutual_tls_gateway(tmp_path_factory, tls):
    """The gateway with mutual TLS: clients need a certificate the test CA signed."""
    flags = [
        "--internal-tls-cert",
        tls.cert_file,
        "--internal-tls-key",
        tls.key_file,
        "--internal-client-ca",
        tls.ca_file,
        "--config",
        tls.config_file,
    ]
    gateway = Gateway(tmp_path_factory.mktemp("data"), flags)
    yield gateway
    gateway.stop()
