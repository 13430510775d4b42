#!/usr/bin/env bash
# Refresh constraints.txt: install every extra unpinned into a fresh virtual environment and
# write what pip chose. Then run the suite against it (make test) before committing the file:
# constraints.txt must hold the versions the suite passed with.
#
#   scripts/refresh-constraints.sh [VENV]     (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
VENV="$venv" scripts/install.sh --dev --train --unpinned
{
  echo "# The versions the test suite passed with (Python 3.11, Linux x86_64). scripts/install.sh installs"
  echo "# within these (pip -c), so a fresh machine, CI and the Docker images get what was tested."
  echo "# Refresh: scripts/refresh-constraints.sh (docs/deployment.md, \"Pinned versions\")."
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^mammo-node' | sort -f
} > constraints.txt
echo "wrote constraints.txt from $venv; now run: VENV=$venv make test, and commit it if the suite passes"
