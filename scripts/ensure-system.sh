#!/usr/bin/env bash
# Install what the project needs from Debian: Chromium for Playwright (its own browser download cannot work
# offline, so Playwright drives Debian's build by executable path). The crawler renders with the headless
# shell (the same engine without the browser UI: lighter per page); the end-to-end test screenshots the
# Prefect UI with the full browser.
set -euo pipefail
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromium-headless-shell ]; then
  echo ">> installing Debian chromium and chromium-headless-shell" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-headless-shell >/dev/null
fi
