#!/usr/bin/env bash
# Renders an HTML page (e.g. a `lowmem plan --html` page) to a PNG in headless Chromium.
# Usage: scripts/screenshot.sh PAGE.html OUT.png   (CHROMIUM overrides /usr/bin/chromium)
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 PAGE.html OUT.png" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
chromium=${CHROMIUM:-/usr/bin/chromium}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1200,900 --screenshot="$out" "file://$page"
test -s "$out"
