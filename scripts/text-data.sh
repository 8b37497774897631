#!/usr/bin/env bash
# The default text of language-model runs: the King James Bible from Debian's bible-kjv package,
# all of it (Gen1:1-Rev22:21) as plain text in data/kjv.txt (about 4.3 MB; ignored by git).
# Made once: an existing file is kept (--force makes it again). Written atomically (a temporary
# file in data/, then a rename), so an interrupted run never leaves a partial file behind.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/data/kjv.txt"
if [ -s "$out" ] && [ "${1:-}" != --force ]; then
  exit 0
fi
if ! command -v bible >/dev/null 2>&1; then
  "$root/scripts/deps.sh" build # bible-kjv is among the build packages
fi
mkdir -p "$root/data"
tmp="$(mktemp "$root/data/.kjv.txt.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# COLUMNS fixes the line width bible wraps at, so the file is the same on every machine
COLUMNS=80 bible Gen1:1-Rev22:21 </dev/null >"$tmp"
if [ ! -s "$tmp" ]; then
  echo "scripts/text-data.sh: bible wrote nothing" >&2
  exit 1
fi
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "text data: $out ($(wc -c <"$out") bytes)" >&2
