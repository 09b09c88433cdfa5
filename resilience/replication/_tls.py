"""Security of the replication link: mutual TLS and a per-deployment token.

`make_pki` writes a throwaway certificate authority, one certificate per site (each
both server and client, valid for 127.0.0.1 and localhost and named after its site)
and a random token: what a drill needs, and a starting point for a real deployment,
which brings certificates of its own (`LinkSecurity` only names files).

The receiver requires a client certificate signed by the CA (TLS refuses anything
else during the handshake) and checks the token on every call (`TokenCheck`): a
client with neither is refused, and one with a certificate but not the token gets
``UNAUTHENTICATED``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from resilience.replication._config import LinkSecurity

__all__ = ["TokenCheck", "channel_credentials", "make_pki", "server_credentials"]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_pki(directory: Path, sites: Sequence[str], *, days: int = 30,
             ca_name: str = "fusion-resilience drill CA") -> dict[str, LinkSecurity]:
    """Create a CA, a certificate and key per site, and a token under `directory`.

    Returns each site's `LinkSecurity`. Keys and the token are written mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: Any) -> bytes:
        return bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))

    directory = Path(directory)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    usage = {"content_commitment": False, "key_encipherment": False,
             "data_encipherment": False, "key_agreement": False, "encipher_only": False,
             "decipher_only": False}
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.crt"
    ca_path.parent.mkdir(parents=True, exist_ok=True)
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    token_path = directory / "token"
    _write_private(token_path, (secrets.token_hex(32) + "\n").encode())
    out = {}
    for site in sites:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"site-{site}")]))
            .issuer_name(ca_subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName(f"site-{site}"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{site}.crt", directory / f"{site}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, pem_key(key))
        out[site] = LinkSecurity(ca=ca_path, cert=cert_path, key=key_path,
                                 token_file=token_path)
    return out


def server_credentials(security: LinkSecurity) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by the deployment's CA."""
    return grpc.ssl_server_credentials(
        [(security.key.read_bytes(), security.cert.read_bytes())],
        root_certificates=security.ca.read_bytes(), require_client_auth=True)


def channel_credentials(security: LinkSecurity) -> grpc.ChannelCredentials:
    """TLS with this site's certificate, trusting only the deployment's CA."""
    return grpc.ssl_channel_credentials(security.ca.read_bytes(), security.key.read_bytes(),
                                        security.cert.read_bytes())


class TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the replication link needs a non-empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        metadata = dict(details.invocation_metadata or ())
        presented = str(metadata.get("authorization", "")).encode()
        handler = continuation(details)
        if handler is None or hmac.compare_digest(presented, self._expected):
            return handler

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong deployment token")

        # The same shape as the real handler, so a streaming call is refused cleanly too.
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[
            (handler.request_streaming, handler.response_streaming)]
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
