#!/usr/bin/env bash
# Debian chromium + fonts for kaleido (Plotly static export) and the Playwright browser tests.
# Never `playwright install` or kaleido's get_chrome: they download a browser, which fails offline.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi liberation; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-liberation >/dev/null
