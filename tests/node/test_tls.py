"""DICOM TLS with certificates made here (a CA, the node, a client): on the listener, and on the
associations that deliver our SRs to a PACS."""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pydantic import ValidationError
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage

from node.config import DestinationTLS, DicomDestination
from node.dicom.scu import TLSClientOptions, echo
from node.outputs.dicom_send import send_files
from tests.node.conftest import free_port
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


# ----- outgoing: SRs to a PACS that requires TLS --------------------------------------------------

@pytest.fixture
def tls_pacs(pki):
    """A real Storage SCP that speaks only TLS and requires a client certificate from our CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(pki["server_cert"]), str(pki["server_key"]))
    received: list[str] = []

    def on_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComprehensiveSRStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, received
    server.shutdown()


@pytest.fixture
def sr_file(tmp_path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = "2.25.4242"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dest(port: int, host: str = "127.0.0.1", **tls) -> DicomDestination:
    return DicomDestination(name="pacs", ae_title="PACS", host=host, port=port, timeout=5, tls=tls)


def test_srs_reach_a_tls_pacs_with_our_client_certificate(tls_pacs, pki, sr_file) -> None:
    port, received = tls_pacs
    dest = _dest(port, enabled=True, ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    assert [d.outcome for d in send_files(dest, "MAMMO_NODE", [sr_file, sr_file])] == ["delivered"] * 2
    assert received == ["2.25.4242"] * 2


@pytest.mark.parametrize("case", ["plain", "untrusted-server", "no-client-cert", "wrong-name"])
def test_nothing_is_sent_unless_the_tls_checks_pass(tls_pacs, pki, sr_file, case: str) -> None:
    """Each failure is a retry (the outbox tries again once the certificates are fixed), never a
    cleartext send and never a send to a server we could not verify."""
    port, received = tls_pacs
    good = {"enabled": True, "ca": pki["ca"], "cert": pki["client_cert"], "key": pki["client_key"]}
    dest = {
        "plain": _dest(port),
        "untrusted-server": _dest(port, **{**good, "ca": pki["rogue_cert"]}),
        "no-client-cert": _dest(port, enabled=True, ca=pki["ca"]),
        "wrong-name": _dest(port, host="localhost", **good),  # the server certificate names 127.0.0.1 only
    }[case]
    [delivery] = send_files(dest, "MAMMO_NODE", [sr_file])
    assert delivery.outcome == "retry", delivery
    assert received == []


def test_hostname_check_can_be_turned_off_for_certificates_without_the_name(tls_pacs, pki, sr_file) -> None:
    port, received = tls_pacs
    dest = _dest(port, host="localhost", enabled=True, ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"],
                 check_hostname=False)
    assert [d.outcome for d in send_files(dest, "MAMMO_NODE", [sr_file])] == ["delivered"]
    assert received == ["2.25.4242"]


def test_tls_destination_to_a_plain_pacs_sends_nothing(pki, sr_file) -> None:
    received: list[str] = []
    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComprehensiveSRStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append("x") or 0)])
    try:
        [delivery] = send_files(_dest(port, enabled=True, ca=pki["ca"]), "MAMMO_NODE", [sr_file])
    finally:
        server.shutdown()
    assert delivery.outcome == "retry" and "TLS" in delivery.detail
    assert received == []


def test_unreadable_certificate_files_are_a_clear_retry(pki, sr_file, tmp_path) -> None:
    dest = _dest(free_port(), enabled=True, ca=pki["ca"], cert=tmp_path / "missing.pem", key=tmp_path / "missing.key")
    [delivery] = send_files(dest, "MAMMO_NODE", [sr_file])
    assert delivery.outcome == "retry" and delivery.detail.startswith("TLS configuration")


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="cert and key go together"):
        DestinationTLS(enabled=True, cert=Path("c.pem"))
