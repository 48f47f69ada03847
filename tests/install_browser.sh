#!/usr/bin/env bash
# Install what tests/test_browser.py needs on a Debian machine: Debian's Chromium (Playwright drives it through
# `executable_path`; never run `playwright install`, its browser download is not available here).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -u

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser.sh: $CHROMIUM already installed: $("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')"
else
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: ERROR: $CHROMIUM is missing and this script is neither run as root nor can it use sudo." >&2
        echo "  Install it as root with: apt-get update && apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser.sh: ERROR: $CHROMIUM is missing and apt-get is not available (this script supports Debian/Ubuntu)." >&2
        exit 1
    fi
    echo "install_browser.sh: installing chromium and chromium-driver with apt-get ..."
    if ! $SUDO apt-get update; then
        echo "install_browser.sh: ERROR: 'apt-get update' failed (no access to the Debian package mirrors?)." >&2
        exit 1
    fi
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver; then
        echo "install_browser.sh: ERROR: 'apt-get install chromium chromium-driver' failed." >&2
        exit 1
    fi
    if [ ! -x "$CHROMIUM" ]; then
        echo "install_browser.sh: ERROR: apt-get finished but $CHROMIUM is still missing." >&2
        exit 1
    fi
    echo "install_browser.sh: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
fi

# Playwright (the Python package) comes from pip with the project's dev requirements; only check it here.
PY="${PYTHON:-$(command -v python || command -v python3)}"
if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_browser.sh: WARNING: the Python package 'playwright' is not importable by $PY;" >&2
    echo "  install the dev requirements (pip install playwright) in the environment that runs pytest." >&2
fi
exit 0
