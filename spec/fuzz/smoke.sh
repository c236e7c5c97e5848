#!/usr/bin/env bash
# A short, bounded run of every fuzz target (ctest runs this): builds them,
# then fuzzes each for FUZZ_SECONDS (default 6; 30 s for the five) from its
# committed corpus. New inputs go to a scratch directory, never into the repo.
# Any crash, sanitizer report, hang or broken invariant fails the run.
#
#   spec/fuzz/smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-build/fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-6}
TARGETS=${FUZZ_TARGETS:-"proxy_protocol sni config request response"}
spec/fuzz/build.sh "$OUT" >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for unit in $TARGETS; do
  mkdir -p "$scratch/$unit"
  "$OUT/fuzz_$unit" -max_total_time="$SECONDS_EACH" -timeout=5 -print_final_stats=1 \
    -artifact_prefix="$scratch/" "$scratch/$unit" "spec/fuzz/corpus/$unit" 2>"$scratch/$unit.log" || {
    tail -60 "$scratch/$unit.log"
    echo "fuzz_$unit: FAILED"
    exit 1
  }
  runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$scratch/$unit.log" | grep -o '[0-9]*$')
  echo "fuzz_$unit: ${runs:-?} executions in ${SECONDS_EACH} s, no failure"
done
# The reproducers of past findings (regressions/<target>-*) must stay fixed.
for f in spec/fuzz/regressions/*; do
  name=$(basename "$f")
  unit=${name%%-*}
  "$OUT/fuzz_$unit" -timeout=10 "$f" >"$scratch/regression.log" 2>&1 || {
    tail -40 "$scratch/regression.log"
    echo "fuzz_$unit: regression $name FAILED"
    exit 1
  }
done
echo "regressions: $(ls spec/fuzz/regressions | wc -l) past findings replayed, all fixed"
