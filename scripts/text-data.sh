#!/usr/bin/env bash
# Text data of the language-model runs, made once in data/ (ignored by git):
#   scripts/text-data.sh [--force]            data/kjv.txt: the King James Bible from Debian's bible-kjv
#                                             package, all of it (Gen1:1-Rev22:21) as plain text (about 4.3 MB),
#                                             the default text of q3r train
#   scripts/text-data.sh fortunes [--force]   data/fortunes.txt: the text files of Debian's fortunes package
#                                             (/usr/share/games/fortunes/*, in name order: not the .dat indexes,
#                                             not the .u8 links to the same files, not the offensive/ folder)
#                                             concatenated: English of another kind, the fine-tuning text of
#                                             scripts/experiment_finetune.py (about 2.6 MB)
# An existing file is kept (--force makes it again). Written atomically (a temporary file in
# data/, then a rename), so an interrupted run never leaves a partial file behind.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
what=kjv force=
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    kjv|fortunes) what="$arg" ;;
    *) echo "usage: scripts/text-data.sh [kjv|fortunes] [--force]" >&2; exit 2 ;;
  esac
done
out="$root/data/$what.txt"
if [ -s "$out" ] && [ -z "$force" ]; then
  exit 0
fi
fortunes_dir=/usr/share/games/fortunes
if { [ "$what" = kjv ] && ! command -v bible >/dev/null 2>&1; } ||
   { [ "$what" = fortunes ] && [ ! -s "$fortunes_dir/fortunes" ]; }; then
  "$root/scripts/deps.sh" build # bible-kjv and fortunes are among the build packages
fi
mkdir -p "$root/data"
tmp="$(mktemp "$root/data/.$what.txt.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
if [ "$what" = kjv ]; then
  # COLUMNS fixes the line width bible wraps at, so the file is the same on every machine
  COLUMNS=80 bible Gen1:1-Rev22:21 </dev/null >"$tmp"
else
  # plain files only (find -type f: no links, no folders), sorted by name in the C locale so the
  # file is the same on every machine
  find "$fortunes_dir" -maxdepth 1 -type f ! -name '*.dat' -print0 | LC_ALL=C sort -z | xargs -0 cat >"$tmp"
fi
if [ ! -s "$tmp" ]; then
  echo "scripts/text-data.sh: nothing written for $out" >&2
  exit 1
fi
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "text data: $out ($(wc -c <"$out") bytes)" >&2
