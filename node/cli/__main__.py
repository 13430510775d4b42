"""``python -m node.cli``: the same as the ``mammo-node`` command."""
from node.cli.app import main

main()
