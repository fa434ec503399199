#!/usr/bin/env bash
# Measures nodelink against the targets of docs/PERFORMANCE.md: builds the release binaries,
# writes a token file for the simulated agents, and for each scenario starts a fresh
# `nodelink server` on free 127.0.0.1 ports and runs `nodelink-bench` against it. Prints one
# summary table and keeps every JSON report (and the server logs) in
# bench-results/<date>-<commit>/ (git-ignored); exits 1 if a run failed or a target was
# missed. About 2 minutes once the build is warm.
#
# Environment: BENCH_DURATION (default 8s) is the measured phase of each scenario;
# BENCH_ONLY="dispatch-closed ingest" runs only the named runs; RUST_LOG is passed to the
# server (default: its default, info).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/server-lib.sh
source scripts/server-lib.sh
bash scripts/setup.sh

duration=${BENCH_DURATION:-8s}
only=${BENCH_ONLY:-}
target_dir=${CARGO_TARGET_DIR:-target}
agents=2000

echo "== cargo build --release (nodelink, nodelink-bench)" >&2
cargo build --release --locked --bin nodelink --bin nodelink-bench >&2
server_bin="$target_dir/release/nodelink"
bench_bin="$target_dir/release/nodelink-bench"

# 2 000 agent connections and 500 event streams need more descriptors than the usual 1 024,
# in the server and in the load generator alike.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
  echo "warning: open-file limit is $(ulimit -n); the agents and fanout runs may fail" >&2
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit+dirty"
fi
out="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$commit"
mkdir -p "$out"
work=$(mktemp -d)
server_pid=""

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Credentials: bench-0000 .. bench-1999 with random tokens, and an API token.
write_credentials "$work/agents.json" 'bench-%04d' "$agents"

# A fresh server with a generous registry and output budget (ingest verifies every byte its
# tasks retain) and a fresh data directory (or, with server_extra=(--in-memory), none); sets
# server_pid, http_addr, grpc_addr.
server_extra=()
start_bench_server() {
  local store=(--data-dir "$work/data-$2")
  [[ " ${server_extra[*]} " == *" --in-memory "* ]] && store=()
  start_server "$1" --agent-tokens "$work/agents.json" --api-token-file "$api_token_file" \
    --max-tasks 1000000 --max-output-total-bytes 4294967296 "${store[@]}" "${server_extra[@]}"
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

failed=()
# run NAME SCENARIO ARGS...: one scenario against a fresh server.
run() {
  local name=$1
  shift
  if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then
    return 0
  fi
  echo "== $name: nodelink-bench $*" >&2
  if ! start_bench_server "$out/$name.server.log" "$name"; then
    failed+=("$name")
    return 0
  fi
  if ! "$bench_bin" "$@" --http "$http_addr" --grpc "$grpc_addr" --api-token "$api_token" \
    --agent-tokens "$work/agents.json" --server-pid "$server_pid" --label "$name" --json \
    >"$out/$name.json"; then
    echo "!! $name failed" >&2
    failed+=("$name")
    rm -f "$out/$name.json"
  fi
  stop_server
}

run agents agents --agents "$agents" --duration 5s
run dispatch-closed dispatch --duration "$duration"
run dispatch-2000 dispatch --rate 2000 --duration "$duration"
run dispatch-poll dispatch --completion poll --duration 4s
run ingest ingest --chunk-bytes 64 --duration "$duration"
run fanout fanout --clients 500 --rate 1000 --duration "$duration"
# The same dispatch and ingest with history in memory only: the store's cost is the ratio.
server_extra=(--in-memory)
run dispatch-closed-memory dispatch --duration "$duration"
run ingest-memory ingest --chunk-bytes 64 --duration "$duration"
server_extra=()

{
  echo "nodelink bench: commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load generator on the same machine"
  echo
  shopt -s nullglob
  files=("$out"/*.json)
  if [ ${#files[@]} -gt 0 ]; then
    # --check names each missed target on stderr and exits 1; recorded for the exit below.
    "$bench_bin" summary --check "${files[@]}" || echo missed >"$out/.missed"
  fi
  # The durable store must keep at least 80 % of the in-memory dispatch rate.
  if [ -e "$out/dispatch-closed.json" ] && [ -e "$out/dispatch-closed-memory.json" ]; then
    python3 - "$out/dispatch-closed.json" "$out/dispatch-closed-memory.json" <<'PY' || echo missed >"$out/.missed"
import json, sys
def rate(path):
    r = json.load(open(path))
    return r.get("figures", {}).get("completed_per_s") or 0.0
store, memory = rate(sys.argv[1]), rate(sys.argv[2])
ratio = store / memory if memory else 0.0
print(f"dispatch closed loop, store vs --in-memory: {store:.0f} / {memory:.0f} tasks/s = {ratio:.0%} (goal >= 80%)")
sys.exit(0 if ratio >= 0.8 else 1)
PY
  fi
} | tee "$out/summary.txt"
echo "reports: $out" >&2
status=0
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed runs: ${failed[*]}" >&2
  status=1
fi
if [ -e "$out/.missed" ]; then
  rm -f "$out/.missed"
  echo "targets missed (see above)" >&2
  status=1
fi
exit "$status"
