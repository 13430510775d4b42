"""Reports as structured data: the lexicon (``lexicon``), the parser (``parse``, with its patterns
in ``patterns``) and the result types (``result``). One implementation serves evaluation, MammoRG's
stage-1 labels and the node's SR/HL7 encoders. Torch-free, numpy-free.
"""
