"""The coordinator's CA, the SuperLink's certificate and the organisations' SuperNode keys."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedrs.federated.credentials import _cli, issue_ca, issue_server_certificate, node_keypair


def test_the_superlink_certificate_is_signed_by_the_ca_for_its_addresses(tmp_path):
    ca_cert, ca_key = issue_ca(tmp_path / "ca")
    cert_path, key_path = issue_server_certificate(tmp_path / "ca", ["127.0.0.1", "coordinator.lab"], tmp_path / "s")
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.lab"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # private keys are readable by their owner only
    for key in (ca_key, key_path):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # another CA of the same name does not verify it
    other, _ = issue_ca(tmp_path / "other")
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.read_bytes()))


def test_a_server_certificate_needs_a_host(tmp_path):
    issue_ca(tmp_path)
    with pytest.raises(ValueError, match="at least one host"):
        issue_server_certificate(tmp_path, [], tmp_path / "s")


def test_a_supernode_key_pair_is_openssh_p384(tmp_path):
    private, public = node_keypair(tmp_path / "org1")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_the_command_line_writes_all_three(tmp_path, capsys):
    _cli(["ca", "--dir", str(tmp_path / "ca")])
    _cli(["server", "--ca-dir", str(tmp_path / "ca"), "--dir", str(tmp_path / "s"), "--host", "localhost"])
    _cli(["node", "--key", str(tmp_path / "keys" / "org1")])
    assert {p.name for p in tmp_path.rglob("*") if p.is_file()} == {"ca.crt", "ca.key", "server.crt", "server.key",
                                                                     "org1", "org1.pub"}
    assert "wrote" in capsys.readouterr().out
