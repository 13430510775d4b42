"""Synthetic four-view screening studies (MG DICOM, labels, reference report): test and demo data.

Torch-free, used by the node's ``phantom`` command, training, export's golden vectors, the
benchmarks and the tests. ``phantoms.study`` is the entry point (``generate_study``,
``write_study``, ``write_phantom_studies``, ``PHANTOM_VERSION``); ``anatomy``, ``lesions``,
``render``, ``labels``, ``report`` and ``dicom`` are its parts. Realism and sources:
docs/phantom.md.
"""
