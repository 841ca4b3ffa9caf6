#!/usr/bin/env bash
# Installs the headless browser the console's end-to-end test drives: Debian's chromium and its
# chromedriver (Selenium talks to that driver; nothing is downloaded at test time).
#
#   scripts/browser.sh install   # apt-get install chromium chromium-driver unless both are on PATH
set -euo pipefail

log() { echo "browser.sh: $*" >&2; }

cmd_install() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    log "chromium and chromedriver already installed ($(chromedriver --version 2>/dev/null | cut -d' ' -f2))"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Try without 'apt-get update' first: it is slow and usually the lists are fresh enough.
  if ! apt-get install -y -q chromium chromium-driver; then
    log "install failed; refreshing package lists and retrying"
    apt-get update -q
    apt-get install -y -q chromium chromium-driver
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
