#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/fuzz_*.c, CMake option Q3R_FUZZ: clang, ASan + UBSan) and run
# each from its seeds in fuzz/corpus/<target>/, failing on any crash, leak, UB report, timeout or
# out-of-memory. Needs clang-14 and its runtimes: scripts/deps.sh fuzz.
#   scripts/fuzz.sh                      every target for 20 s, one at a time
#   scripts/fuzz.sh --seconds 3600       an hour each (the long run before a release)
#   scripts/fuzz.sh --runs 10000000      10^7 executions each
#   scripts/fuzz.sh --jobs 2 json meta   two targets side by side; targets named without fuzz_
#   scripts/fuzz.sh --merge ...          afterwards, add the new inputs that widen coverage to
#                                        fuzz/corpus/ (otherwise the repository's corpus is only read)
#   scripts/fuzz.sh --make-corpus        rewrite the seeds (fuzz/make_corpus.c; regress-* are kept)
#   scripts/fuzz.sh --build-only
# Per target it prints the executions, exec/s, new inputs and coverage; a finding's input is kept in
# <build>/artifacts/<target>/ (reproduce: <build>/fuzz_<target> <that file>). Build directory:
# $Q3R_FUZZ_BUILD_DIR, default build-fuzz/. Compiler: $Q3R_FUZZ_CC, default clang-14.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${Q3R_FUZZ_BUILD_DIR:-$root/build-fuzz}"
cc="${Q3R_FUZZ_CC:-clang-14}"
seconds=20 runs="" jobs=1 merge=0 make_corpus=0 build_only=0 targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; runs=""; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --merge) merge=1; shift ;;
    --make-corpus) make_corpus=1; shift ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    *) targets+=("${1#fuzz_}"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then
  for f in "$root"/fuzz/fuzz_*.c; do
    t="$(basename "$f" .c)"
    [ "$t" = fuzz_common ] || targets+=("${t#fuzz_}")
  done
fi
for t in "${targets[@]}"; do
  [ -f "$root/fuzz/fuzz_$t.c" ] || { echo "fuzz.sh: no target fuzz/fuzz_$t.c" >&2; exit 2; }
done
command -v "$cc" >/dev/null || { echo "fuzz.sh: $cc not found (scripts/deps.sh fuzz)" >&2; exit 1; }

echo "fuzz.sh: building into $build ($cc, libFuzzer + ASan + UBSan)"
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER="$cc" -DQ3R_FUZZ=ON -DQ3R_MPI=OFF -DCMAKE_BUILD_TYPE=Debug \
  -DQ3R_WERROR=ON >/dev/null
cmake --build "$build" --target fuzz -j"$(nproc)" >/dev/null

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

if ((make_corpus)); then
  TMPDIR="${TMPDIR:-/tmp}" "$build/fuzz_make_corpus" "$root/fuzz/corpus"
  echo "fuzz.sh: seeds written to fuzz/corpus/ ($(du -sb "$root/fuzz/corpus" | cut -f1) bytes in all)"
fi
((build_only)) && exit 0

scratch="$(mktemp -d "${TMPDIR:-/tmp}/q3r-fuzz.XXXXXX")"
# the targets' own files (written and read at every execution) in memory where there is a tmpfs
files="$scratch"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then files="$(mktemp -d /dev/shm/q3r-fuzz.XXXXXX)"; fi
trap 'rm -rf "$scratch" "$files"' EXIT
if [ -n "$runs" ]; then limit=(-runs="$runs"); what="$runs runs"; else limit=(-max_total_time="$seconds"); what="$seconds s"; fi
echo "fuzz.sh: ${#targets[@]} targets, $what each, $jobs at a time"

# One target: new inputs go to the scratch corpus (listed first, so libFuzzer writes there), the
# repository's corpus is read only. Writes $scratch/<t>.log and a one-line summary $scratch/<t>.sum.
run_one() {
  local t="$1" dir="$scratch/$t"
  mkdir -p "$dir/new" "$files/$t" "$build/artifacts/$t"
  local rc=0
  TMPDIR="$files/$t" "$build/fuzz_$t" "${limit[@]}" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048 \
    -dict="$root/fuzz/q3r.dict" -artifact_prefix="$build/artifacts/$t/" "$dir/new" "$root/fuzz/corpus/$t" \
    >"$scratch/$t.log" 2>&1 || rc=$?
  local execs rate added cov
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -1 || true)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log" | tail -1 || true)"
  added="$(find "$dir/new" -type f | wc -l)"
  cov="$(grep -o 'cov: [0-9]*' "$scratch/$t.log" | tail -1 | cut -d' ' -f2 || true)"
  printf '%-12s %10s runs %7s exec/s  %4s new  cov %5s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$added" \
    "${cov:-?}" "$( ((rc == 0)) && echo ok || echo "FAILED (exit $rc)")" >"$scratch/$t.sum"
  if ((rc == 0 && merge && added > 0)); then
    "$build/fuzz_$t" -merge=1 "$root/fuzz/corpus/$t" "$dir/new" >>"$scratch/$t.log" 2>&1 ||
      echo "fuzz.sh: merging $t's new inputs failed (see above)" >>"$scratch/$t.sum"
  fi
  return "$rc"
}

failed=()
running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
wait || true

echo "target             executions   exec/s  new inputs  coverage"
for t in "${targets[@]}"; do
  [ -f "$scratch/$t.sum" ] || echo "$t: no result (fuzz.sh itself failed)" >"$scratch/$t.sum"
  cat "$scratch/$t.sum"
  if ! grep -q ' ok$' "$scratch/$t.sum"; then
    failed+=("$t")
    echo "---- fuzz_$t: the end of its log ----"
    grep -v '^#[0-9]' "$scratch/$t.log" 2>/dev/null | tail -60
    echo "---- input(s) kept in $build/artifacts/$t/:"
    ls -1 "$build/artifacts/$t/" 2>/dev/null || true
  fi
done
((merge)) && echo "fuzz.sh: new inputs that widen coverage merged into fuzz/corpus/ (git status shows them)"
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in ${failed[*]} (reproduce: $build/fuzz_<target> <input>)" >&2
fi
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
