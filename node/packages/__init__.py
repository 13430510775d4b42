"""Model packages: the on-disk format (``manifest``), and the installed set (``registry``).

docs/model-packages.md describes the format and the admin workflow. Pure Python + numpy: the
format is shared by ``export/`` (which writes packages) and the node (which reads them).
"""
