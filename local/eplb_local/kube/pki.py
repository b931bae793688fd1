"""The control plane's keys and certificates, made once per cluster directory.

One CA signs the API server's serving certificate and the client certificates (the admin
in ``system:masters``, the controller-manager as ``system:kube-controller-manager``, the
node agent as ``system:node:<name>``). A separate key pair signs ServiceAccount tokens.
Everything is written with mode 0600 under ``pki/``; a directory that has them is reused.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from eplb_local.kube.lws import CONTROLLER_USER

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    node: KeyPair
    lws_client: KeyPair  # the LeaderWorkerSet controller's identity (lws.CONTROLLER_USER)
    lws_webhook: KeyPair  # its webhooks' serving certificate, for 127.0.0.1
    service_account_key: Path  # private: signs tokens (controller-manager, apiserver)
    service_account_pub: Path  # public: verifies them (apiserver)


def ensure_pki(directory: Path, node_name: str, serving_ip: str) -> ClusterPki:
    """Create (or reuse) every key and certificate the local cluster needs; the API server's
    serving certificate is issued anew for ``serving_ip`` (its address this time)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = ClusterPki(
        ca=_pair(directory, "ca"),
        apiserver=_pair(directory, "apiserver"),
        admin=_pair(directory, "admin"),
        controller_manager=_pair(directory, "controller-manager"),
        node=_pair(directory, "node"),
        lws_client=_pair(directory, "lws-controller"),
        lws_webhook=_pair(directory, "lws-webhook"),
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )
    if not all(p.exists() for p in (pki.ca.cert, pki.node.key, pki.service_account_pub)):
        _create(pki, node_name)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    serving_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(serving_ip)),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),  # the `kubernetes` Service
        ]
    )
    _issue(pki.apiserver, "kube-apiserver", None, ca_cert, ca_key, serving_names)
    _issue(pki.lws_client, CONTROLLER_USER, None, ca_cert, ca_key)
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    _issue(pki.lws_webhook, "lws-webhook-service", None, ca_cert, ca_key, loopback)
    return pki


def _create(pki: ClusterPki, node_name: str) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eplb-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki.ca, ca_cert, ca_key)
    _issue(pki.admin, "eplb-local-admin", "system:masters", ca_cert, ca_key)
    _issue(pki.controller_manager, "system:kube-controller-manager", None, ca_cert, ca_key)
    _issue(pki.node, f"system:node:{node_name}", "system:nodes", ca_cert, ca_key)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    _secret_file(pki.service_account_key, _private_pem(sa_key))
    _secret_file(
        pki.service_account_pub,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _pair(directory: Path, name: str) -> KeyPair:
    return KeyPair(directory / f"{name}.crt", directory / f"{name}.key")


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _issue(
    pair: KeyPair,
    common_name: str,
    organization: str | None,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serving_names: x509.SubjectAlternativeName | None = None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if serving_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(x509.Name(attributes), ca_cert.subject, key.public_key()).add_extension(
        x509.ExtendedKeyUsage([usage]), critical=False
    )
    if serving_names is not None:
        builder = builder.add_extension(serving_names, critical=False)
    _write(pair, builder.sign(ca_key, hashes.SHA256()), key)


def _write(pair: KeyPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _secret_file(pair.key, _private_pem(key))
    _secret_file(pair.cert, cert.public_bytes(serialization.Encoding.PEM))


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _secret_file(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)
