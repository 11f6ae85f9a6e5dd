"""TLS on the serving port: HAProxy's lines for it, and the certificate the production profile
makes for 127.0.0.1.

HAProxy terminates TLS on the fleet's port when ``FRAUD_TLS_CERT`` names a PEM file holding the
certificate chain and its private key (mode 0600); the replicas behind it stay plain HTTP on
loopback. Protocols and suites follow Mozilla's "intermediate" profile: TLS 1.2 with
forward-secret AEAD suites only, TLS 1.3, no session tickets. A plain-HTTP request on that port
gets no answer (the handshake fails), and ``/metrics`` of the replicas is not served there.
Callers trust the certificate through ``FRAUD_TLS_CA`` (:func:`flows.core.http.http_json`).

:func:`make_certificate` writes a private CA (``ca.pem``, whose key is not kept) and a server
certificate for ``127.0.0.1`` and ``localhost`` signed by it (``haproxy.pem``): what the
production profile uses unless ``FRAUD_TLS_CERT`` names a real one (docs/security.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from flows.core.http import TLS_CA_ENV

TLS_CERT_ENV = "FRAUD_TLS_CERT"
TLS12_CIPHERS = ":".join(
    f"ECDHE-{kx}-{c}" for c in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    for kx in ("ECDSA", "RSA")
)  # fmt: skip
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
__all__ = ["TLS_CA_ENV", "TLS_CERT_ENV", "bind_lines", "global_lines", "make_certificate"]


class TlsError(ValueError):
    """The TLS setting is unusable; the message names the variable and the file."""


def global_lines(cert: str | None) -> list[str]:
    """HAProxy ``global`` lines of a TLS frontend: TLS 1.2 at least, modern suites, no tickets."""
    if not cert:
        return []
    return [
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        f"    ssl-default-bind-ciphers {TLS12_CIPHERS}",
        f"    ssl-default-bind-ciphersuites {TLS13_SUITES}",
    ]


def bind_lines(address: str, cert: str | None) -> list[str]:
    """The frontend's ``bind`` (with TLS when ``cert`` is set) and what TLS turns on with it."""
    if not cert:
        return [f"    bind {address}"]
    return [
        f"    bind {address} ssl crt {cert} alpn http/1.1",
        # replicas' /metrics is for scrapers on their own ports, not for the public port
        "    http-request deny deny_status 404 if { path_beg /metrics }",
    ]


def serving_cert(environ: Mapping[str, str] | None = None) -> str | None:
    """``FRAUD_TLS_CERT`` checked (a file, no access for group or others), or None when unset."""
    env = os.environ if environ is None else environ
    raw = env.get(TLS_CERT_ENV, "").strip()
    if not raw:
        return None
    path = Path(raw).absolute()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        raise TlsError(f"{TLS_CERT_ENV}={path}: {err.strerror}") from None
    if mode & 0o077:
        raise TlsError(f"{TLS_CERT_ENV}={path} holds a private key: chmod 600 it (mode {mode:04o})")
    return str(path)


def make_certificate(folder: Path, days: int = 397) -> tuple[Path, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost signed by it, in ``folder``:
    ``(haproxy.pem (chain + key, 0600), ca.pem)``. The CA's key is discarded."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fraud-pipeline local CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    pem = folder / "haproxy.pem"
    tmp = folder / ".haproxy.pem.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(leaf.public_bytes(serialization.Encoding.PEM))
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.replace(tmp, pem)
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ca_file.chmod(0o644)
    return pem, ca_file
