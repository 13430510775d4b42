"""Host allowlists also hold for IPv4 peers reaching a dual-stack listener as ::ffff:a.b.c.d."""
from __future__ import annotations

from node.config import DicomSection
from node.dicom.scp import AssociationPolicy


def test_ipv4_mapped_peer_matches_an_ipv4_allowlist() -> None:
    policy = AssociationPolicy(DicomSection(bind="0.0.0.0", allowed_hosts=["10.1.2.0/24"]))
    assert policy.check("MOD", "MAMMO_NODE", "::ffff:10.1.2.7") is None
    assert policy.check("MOD", "MAMMO_NODE", "10.1.2.7") is None
    assert policy.check("MOD", "MAMMO_NODE", "::ffff:10.9.9.9") is not None
    assert policy.check("MOD", "MAMMO_NODE", "2001:db8::1") is not None
