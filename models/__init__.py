"""What training, export and the node share, in layers you can read from the path.

Torch-free (the node imports these): ``models.preprocess`` (DICOM -> model input),
``models.report`` (lexicon, report parser, result types) and ``models.package`` (the model-package
contract: manifest, graph outputs, label spaces, parity tolerance, demo names). Torch:
``models.versamammo`` and ``models.mammorg`` (the model definitions). docs/architecture.md holds
the table of which package may import which; tests/test_layering.py enforces it.
"""
