"""Prometheus metrics of one node (prometheus-client, a registry per node so tests can run several).

Counters are updated where things happen (listener, pipeline, outbox); gauges that describe the
journal (studies per state, age of the oldest open study, outbox depth) are computed from it at
each scrape, so they are right even after a restart. docs/operations.md lists what to alert on.
"""
from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from node.journal import Journal

OPEN_STATES = ("RECEIVING",)
WAITING_STATES = ("COMPLETE", "PROCESSING")  # closed, result not yet made


class _JournalCollector(Collector):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily]:
        studies = GaugeMetricFamily("mammo_node_studies", "Studies in the journal by state.", labels=["state"])
        for state, count in sorted(self.journal.state_counts().items()):
            studies.add_metric([state], count)
        yield studies
        for name, states, column, help_text in (
                ("mammo_node_oldest_open_study_age_seconds", OPEN_STATES, "first_received_at",
                 "Age of the oldest study still being received (0: none)."),
                ("mammo_node_oldest_unprocessed_study_age_seconds", WAITING_STATES, "closed_at",
                 "Seconds the oldest closed study has waited for its result (0: none).")):
            marks = ",".join("?" * len(states))
            oldest = self.journal.query(f"SELECT MIN({column}) FROM studies WHERE state IN ({marks})", states)
            age = GaugeMetricFamily(name, help_text)
            age.add_metric([], time.time() - oldest[0][0] if oldest and oldest[0][0] else 0.0)
            yield age
        depth = GaugeMetricFamily("mammo_node_outbox", "Outbox rows by destination and state.",
                                  labels=["destination", "state"])
        for dest, state, count in self.journal.query("SELECT destination, state, COUNT(*) FROM outbox "
                                                     "GROUP BY destination, state ORDER BY 1, 2"):
            depth.add_metric([dest, state], count)
        yield depth


class NodeMetrics:
    """Every metric the node exports."""

    def __init__(self, journal: Journal) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.associations = Counter("mammo_node_associations", "DICOM associations accepted.", ["calling_ae"],
                                    registry=r)
        self.instances = Counter("mammo_node_instances_received", "Instances stored (success status).",
                                 ["calling_ae"], registry=r)
        self.bytes = Counter("mammo_node_received_bytes", "Bytes of instances stored.", ["calling_ae"], registry=r)
        self.inference = Histogram("mammo_node_inference_seconds", "Model time per study.", ["model"], registry=r,
                                   buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
        self.studies_processed = Counter("mammo_node_studies_processed", "Studies processed, by outcome.",
                                         ["outcome"], registry=r)
        self.deliveries = Counter("mammo_node_delivery_attempts", "Delivery attempts by destination and outcome "
                                  "(delivered, retry, reject).", ["destination", "outcome"], registry=r)
        self.hl7_naks = Counter("mammo_node_hl7_naks", "Negative HL7 acknowledgements (MSA-1 not AA/CA).",
                                ["code"], registry=r)
        r.register(_JournalCollector(journal))

    def render(self) -> bytes:
        return generate_latest(self.registry)
