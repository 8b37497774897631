#!/usr/bin/env bash
# Format the C sources with clang-format (14) and the repository's .clang-format.
#   scripts/format.sh          rewrite src/ include/ tests/ bench/ examples/ fuzz/ in place
#   scripts/format.sh --check  change nothing; list the files that differ, exit 1 if any
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cf="${CLANG_FORMAT:-clang-format}"
mapfile -t files < <(git ls-files -- src include tests bench examples fuzz | grep -E '\.[ch]$')
case "${1:-}" in
  "")
    "$cf" -i -- "${files[@]}"
    ;;
  --check)
    bad=()
    for f in "${files[@]}"; do
      "$cf" --dry-run --Werror -- "$f" >/dev/null 2>&1 || bad+=("$f")
    done
    if ((${#bad[@]})); then
      printf '%s\n' "${bad[@]}"
      echo "format.sh: ${#bad[@]} file(s) differ from .clang-format; run scripts/format.sh" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: scripts/format.sh [--check]" >&2
    exit 2
    ;;
esac
