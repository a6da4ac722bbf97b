#!/usr/bin/env sh
# Install Debian's chromium for the browser test (tests/plugins/test_browser.py), if it is missing.
# Never downloads a browser from anywhere else (no `playwright install`): Playwright drives this binary
# through executable_path=/usr/bin/chromium. Needs root and apt-get; otherwise it says why and exits 0,
# and the browser test then skips (or fails when CI is set).
set -eu

if [ -x /usr/bin/chromium ]; then
    echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium missing and apt-get not available: install Debian's 'chromium' package by hand." >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium missing: run as root (or: sudo apt-get install -y chromium)." >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
echo "chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
