"""Who may join a federation: the coordinator's certificate authority, the SuperLink's TLS
certificate, and each organisation's SuperNode key pair.

TLS: the coordinator keeps ``ca.key`` private, gives ``ca.crt`` to every organisation (their
SuperNodes and ``flwr`` verify the SuperLink with it) and starts the SuperLink with
``server.crt`` / ``server.key``, issued for the names and addresses it is reached at.
SuperNode authentication (``flower-superlink --enable-supernode-auth``): each organisation makes its
own key pair, keeps the private key, and sends the public key to the coordinator, who registers it
(``flwr supernode register``); a SuperNode whose key was not registered is refused.

``python -m fedrs.federated.credentials ca|server|node`` writes these files (see docs/deployment.md,
"Scale-out"); every private key is written readable by its owner only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# SuperNode authentication accepts NIST curves only; P-384 is what Flower's own guide uses
NODE_CURVE = ec.SECP384R1()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def issue_ca(directory: str | Path, name: str = "fedrs federation CA", days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate authority: ``ca.crt`` (give to everyone) and ``ca.key`` (keep)."""
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / "ca.key", _pem_key(key))
    _write_public(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return directory / "ca.crt", directory / "ca.key"


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_server_certificate(ca_directory: str | Path, hosts: Sequence[str], directory: str | Path,
                             days: int = 365) -> tuple[Path, Path]:
    """The SuperLink's ``server.crt`` / ``server.key``, signed by the CA, valid for ``hosts``
    (DNS names or IP addresses the SuperNodes and ``flwr`` connect to)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address (e.g. 127.0.0.1)")
    ca_directory, directory = Path(ca_directory), Path(directory)
    ca_cert = x509.load_pem_x509_certificate((ca_directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_directory / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_directory / 'ca.key'} is not an EC private key written by issue_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / "server.key", _pem_key(key))
    _write_public(directory / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    return directory / "server.crt", directory / "server.key"


def node_keypair(path: str | Path) -> tuple[Path, Path]:
    """An organisation's SuperNode key pair in OpenSSH format: ``path`` (private, stays with the
    organisation) and ``path.pub`` (sent to the coordinator to register)."""
    path = Path(path)
    key = ec.generate_private_key(NODE_CURVE)
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_public(path.with_name(path.name + ".pub"), public + b"\n")
    return path, path.with_name(path.name + ".pub")


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Certificates and SuperNode keys of a TLS, authenticated federation.")
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="the coordinator's certificate authority (ca.crt, ca.key)")
    ca.add_argument("--dir", required=True)
    ca.add_argument("--days", type=int, default=365)
    server = sub.add_parser("server", help="the SuperLink's TLS certificate, signed by the CA")
    server.add_argument("--ca-dir", required=True)
    server.add_argument("--dir", required=True)
    server.add_argument("--host", action="append", required=True, help="a name or address of the SuperLink (repeat)")
    server.add_argument("--days", type=int, default=365)
    node = sub.add_parser("node", help="an organisation's SuperNode key pair (KEY and KEY.pub)")
    node.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    if args.command == "ca":
        written = issue_ca(args.dir, days=args.days)
    elif args.command == "server":
        written = issue_server_certificate(args.ca_dir, args.host, args.dir, days=args.days)
    else:
        written = node_keypair(args.key)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    _cli()
