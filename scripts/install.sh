#!/usr/bin/env bash
# The one install procedure for mammo-node: used by `make run`, `make test`, CI and the
# Dockerfiles, so what CI tests is what a deployment runs.
#
#   scripts/install.sh [--dev] [--train] [--system] [--unpinned]
#     --dev     also install the test dependencies (extra "dev")
#     --train   also install the training/export stack (extra "train": torch, timm, ...)
#     --system  install the Debian tools the tests use as peers (dcmtk, orthanc, dicom3tools);
#               needs root, skipped with a notice otherwise
#     --unpinned  ignore constraints.txt (the versions the suite passed with); only
#               scripts/refresh-constraints.sh uses it
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
extras=()
system=0
pinned=1
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --train) extras+=(train) ;;
    --system) system=1 ;;
    --unpinned) pinned=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

if [ "$system" = 1 ]; then
  missing=()
  for tool in storescu storescp echoscu dcmdump dciodvfy Orthanc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "installing Debian tools (missing: ${missing[*]})"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends dcmtk orthanc dicom3tools >/dev/null
      # Debian starts an Orthanc service on install where an init system runs; the tests start their own.
      (service orthanc stop || true) >/dev/null 2>&1
    else
      echo "notice: not root, so Debian tools are not installed (missing: ${missing[*]})" >&2
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
spec="."
if [ ${#extras[@]} -gt 0 ]; then
  spec=".[$(IFS=,; echo "${extras[*]}")]"
fi
log=$(mktemp)
constraints=()
if [ "$pinned" = 1 ]; then
  constraints=(-c constraints.txt)
fi
if ! "$VENV/bin/python" -m pip install -q ${constraints[@]+"${constraints[@]}"} -e "$spec" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
"$VENV/bin/python" -c "import node, pynetdicom, onnxruntime"
