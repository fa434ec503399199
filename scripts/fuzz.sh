#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ (docs/RELIABILITY.md) for a bounded time and prints
# its executions, corpus size and findings. Installs cargo-fuzz (and a nightly toolchain) if
# missing, saying so. The fuzz crate links nodelink without its `grpc` feature, so the first
# build takes a minute or two, not the gRPC C core's fifteen.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Environment: FUZZ_TIME (default 60) seconds per target; FUZZ_TARGETS (default: every
# target); FUZZ_ARGS extra libFuzzer flags. task_state starts at full input length
# (-len_control=0 -max_len=1024): its inputs are operation lists, and libFuzzer's slow length
# ramp would otherwise keep them to a handful of operations for minutes.
# Corpora grow in fuzz/corpus/<target> (git-ignored; fuzz/seeds/<target> is the committed
# seed). A crash, leak or timeout leaves its input in fuzz/artifacts/<target>/ and makes the
# script exit 1; reproduce with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-${FUZZ_TIME:-60}}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  read -r -a targets <<<"${FUZZ_TARGETS:-rest_body task_state}"
fi
# The fuzz crate is its own workspace with its own target dir (fuzz/target): sanitizer
# builds must not share the main crate's.
unset CARGO_TARGET_DIR

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: installing a nightly toolchain (cargo-fuzz needs -Z sanitizer flags)" >&2
  rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing; installing it with 'cargo install cargo-fuzz --locked'" >&2
  cargo install cargo-fuzz --locked >&2
fi

status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  log="fuzz/artifacts/$t.log"
  extra=()
  [ "$t" = task_state ] && extra=(-len_control=0 -max_len=1024)
  echo "== $t: ${secs}s" >&2
  rc=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -timeout=30 -print_final_stats=1 \
    "${extra[@]}" ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || rc=$?
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | awk '{ s += $2 } END { print s + 0 }')
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | awk '{ s += $2 } END { print s + 0 }')
  cov=$(grep -oE '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' | cut -d' ' -f2)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  found=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - before))
  line="$t: ${secs}s, $execs executions ($rate/s), coverage ${cov:-?}, corpus $corpus, new findings $found"
  if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
    line="$line: FAILED (exit $rc; see $log and fuzz/artifacts/$t/)"
    status=1
  fi
  echo "$line" >&2
  summary+=("$line")
done
echo
printf '%s\n' "${summary[@]}"
exit $status
