#!/usr/bin/env bash
# Install what the project needs from Debian: Chromium for Playwright (its own browser download cannot work
# offline, so Playwright drives Debian's build by executable path).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  echo ">> installing Debian chromium" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
