"""``mammo-node``, the administrator's command line: one module per command group.

``app`` (the entry point: serve, echo, send, status, config, phantom), ``studies``, ``models``,
``outbox``; what they share (options, consoles, settings, journal, output helpers) is ``common``.
"""
