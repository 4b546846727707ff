"""--tls-cert/--tls-key/--tls-ca: TLS and mutual TLS on the gRPC port, and the refusals of bad configurations
before any model loads. Certificates are made here with the openssl CLI, never committed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from noisesearch_server.proto import load

SERVERS_DIR = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^noisesearch-server listening on (127\.0\.0\.1:\d+)$")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}", cwd=folder,
    )


def make_leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=folder,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_leaf(folder, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    make_leaf(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    make_leaf(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    return folder


def run_server(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "noisesearch_server", "--port", "0", *flags],
        cwd=SERVERS_DIR, capture_output=True, text=True, timeout=60,
    )


def refusals(certs: Path) -> list[tuple[list[str], str]]:
    c = lambda name: str(certs / name)  # noqa: E731
    return [
        (["--tls-cert", c("server.crt")], "--tls-cert: TLS needs both a certificate and its key; add --tls-key PEM"),
        (["--tls-key", c("server.key")], "--tls-key: TLS needs both a certificate and its key; add --tls-cert PEM"),
        (["--tls-ca", c("ca.crt")], "--tls-ca: mutual TLS also needs the server's own --tls-cert and --tls-key"),
        (
            ["--tls-cert", c("missing.crt"), "--tls-key", c("server.key")],
            f"--tls-cert {c('missing.crt')}: cannot read it (No such file or directory); want a readable PEM file",
        ),
        (
            ["--tls-cert", c("server.crt"), "--tls-key", c("client.key")],
            f"--tls-cert {c('server.crt')} / --tls-key {c('client.key')}: not a PEM certificate and its matching private key",
        ),
        (
            ["--tls-cert", c("server.ext"), "--tls-key", c("server.key")],
            f"--tls-cert {c('server.ext')} / --tls-key {c('server.key')}: not a PEM certificate and its matching private key",
        ),
        (
            ["--tls-cert", c("server.crt"), "--tls-key", c("server.key"), "--tls-ca", c("server.ext")],
            f"--tls-ca {c('server.ext')}: not a PEM CA certificate",
        ),
    ]


def test_bad_tls_configurations_exit_2_with_one_line_before_any_model_loads(certs):
    for flags, message in refusals(certs):
        # A model folder that does not exist: had the server got as far as loading models, it would say so instead.
        result = run_server("--model", "sit=/nonexistent/weights", *flags)
        assert result.returncode == 2, (flags, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and result.stdout == "", result.stderr
        assert lines[0].startswith(f"noisesearch-server: {message}"), (lines[0], message)


def test_no_message_carries_the_key(certs):
    key_body = "".join((certs / "client.key").read_text().splitlines()[1:-1])
    result = run_server("--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "client.key"))
    assert result.returncode == 2
    assert key_body[:40] not in result.stderr


def describe(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    messages, services = load()
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return services.DenoiserStub(channel).Describe(messages.DescribeRequest(), timeout=5).model


@pytest.fixture(scope="module")
def mtls_server(certs):
    process = subprocess.Popen(
        [
            sys.executable, "-m", "noisesearch_server", "--host", "127.0.0.1", "--port", "0",
            "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.crt"),
        ],
        cwd=SERVERS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        match = LISTENING.match(process.stdout.readline().rstrip("\n"))
        assert match, process.stderr.read() if process.poll() is not None else "no listening line"
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def credentials(certs: Path, client: str | None) -> grpc.ChannelCredentials:
    ca = (certs / "ca.crt").read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(ca, (certs / f"{client}.key").read_bytes(), (certs / f"{client}.crt").read_bytes())


def test_mutual_tls_serves_a_client_with_a_certificate_of_its_ca(certs, mtls_server):
    assert describe(mtls_server, credentials(certs, "client")) == "gmm"


@pytest.mark.parametrize("client", [None, "stranger", "plaintext"])
def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(certs, mtls_server, client):
    with pytest.raises(grpc.RpcError) as raised:
        describe(mtls_server, None if client == "plaintext" else credentials(certs, client))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
