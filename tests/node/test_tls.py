"""DICOM TLS on the listener with certificates made here: a CA, the node, a client."""
from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.dicom.scu import TLSClientOptions, echo
from tests.node.scu_helpers import associate
from tests.tools import require_tool


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_key, issuer_name: x509.Name, is_ca: bool, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, key, cert) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    _, ca_cert = _issue("Test Hospital CA", ca_key, _name("Test Hospital CA"), True, key=ca_key)
    _, ca_path = _write(base / "ca", ca_key, ca_cert)
    server_key, server_cert = _issue("mammo-node", ca_key, ca_cert.subject, False)
    s_key, s_cert = _write(base / "server", server_key, server_cert)
    client_key, client_cert = _issue("modality", ca_key, ca_cert.subject, False)
    c_key, c_cert = _write(base / "client", client_key, client_cert)
    rogue_ca = ec.generate_private_key(ec.SECP256R1())
    rogue_key, rogue_cert = _issue("rogue", rogue_ca, _name("Rogue CA"), False)
    r_key, r_cert = _write(base / "rogue", rogue_key, rogue_cert)
    return {"ca": ca_path, "server_key": s_key, "server_cert": s_cert, "client_key": c_key,
            "client_cert": c_cert, "rogue_key": r_key, "rogue_cert": r_cert}


def _tls_node(start_node, pki, require_client_cert: bool = True):
    return start_node(dicom={"tls": {"enabled": True, "cert": str(pki["server_cert"]), "key": str(pki["server_key"]),
                                     "ca": str(pki["ca"]), "require_client_cert": require_client_cert}})


def test_client_with_certificate_from_our_ca_is_served(start_node, pki) -> None:
    node = _tls_node(start_node, pki)
    options = TLSClientOptions(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    ok, message = echo("127.0.0.1", node.port, tls=options, called_aet="MAMMO_NODE")
    assert ok, message


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_client_without_a_trusted_certificate_is_refused(start_node, pki, client: str) -> None:
    node = _tls_node(start_node, pki)
    if client == "none":
        options = TLSClientOptions(ca=pki["ca"])
    else:
        options = TLSClientOptions(ca=pki["ca"], cert=pki["rogue_cert"], key=pki["rogue_key"])
    ok, _ = echo("127.0.0.1", node.port, tls=options, timeout=5)
    assert not ok
    # The listener survives failed handshakes.
    good = TLSClientOptions(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    assert echo("127.0.0.1", node.port, tls=good)[0]


def test_plain_tcp_to_the_tls_port_gets_nothing(start_node, pki) -> None:
    node = _tls_node(start_node, pki)
    assoc = associate(node.port)
    assert not assoc.is_established


def test_client_certificate_optional(start_node, pki) -> None:
    node = _tls_node(start_node, pki, require_client_cert=False)
    assert echo("127.0.0.1", node.port, tls=TLSClientOptions(ca=pki["ca"]))[0]


def test_dcmtk_echoscu_over_tls(start_node, pki) -> None:
    echoscu = require_tool("echoscu")
    if "+tls" not in subprocess.run([echoscu, "--help"], capture_output=True, text=True).stdout:
        pytest.fail("this DCMTK echoscu was built without TLS support")
    node = _tls_node(start_node, pki)
    result = subprocess.run(
        [echoscu, "-aec", "MAMMO_NODE", "+tls", str(pki["client_key"]), str(pki["client_cert"]),
         "-pem", "+cf", str(pki["ca"]), "127.0.0.1", str(node.port)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    plain = subprocess.run([echoscu, "-to", "5", "-aec", "MAMMO_NODE", "127.0.0.1", str(node.port)],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0
