"""The model-package contract between ``export/`` (which writes packages) and the node (which
reads them): the manifest format (``manifest``), the graphs' output names (``outputs``), the
heads' label spaces (``labels``), the golden-vector tolerance check (``tolerance``) and the
demonstration packages' names and version (``demo``). Pure Python + numpy.
"""
