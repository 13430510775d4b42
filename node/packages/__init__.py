"""Installed model packages on a node: the registry (install, verify, activate, roll back),
running a package's golden vectors here (``golden``) and finding the shipped demo packages
(``demo``). The package format itself is ``models.package`` (shared with export).

docs/model-packages.md describes the format and the admin workflow. Torch-free.
"""
