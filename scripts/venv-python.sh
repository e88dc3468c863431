#!/usr/bin/env bash
# Print the interpreter make's venv is built with (Makefile: PYTHON), installing what it needs to make a venv.
#
# Debian's python3.11 where the machine has it: Debian builds its interpreter with profile-guided and link-time
# optimisation, as the official python images are built; pyenv's default build (the python3 first on PATH on this
# kind of machine) has neither, and ran the same Python ~15-25 % slower here (docs/performance.md, issue 31). The
# test suite is CPU-bound Python, so that is its time. Elsewhere: python3 from PATH.
set -euo pipefail
DEBIAN_PYTHON=/usr/bin/python3.11
if [ ! -x "$DEBIAN_PYTHON" ] || [ ! -f /etc/debian_version ]; then
  command -v python3
  exit 0
fi
# Debian splits venv's pip bootstrap (ensurepip) into python3.X-venv.
if ! "$DEBIAN_PYTHON" -c "import ensurepip" >/dev/null 2>&1; then
  echo ">> installing python3.11-venv" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3.11-venv >&2
fi
echo "$DEBIAN_PYTHON"
