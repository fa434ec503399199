#!/usr/bin/env bash
# Measures nodelink against the targets of docs/PERFORMANCE.md: builds the release binaries,
# writes a token file for the simulated agents, and for each scenario starts a fresh
# `nodelink server` on free 127.0.0.1 ports and runs `nodelink-bench` against it. Prints one
# summary table and keeps every JSON report (and the server logs) in
# bench-results/<date>-<commit>/ (git-ignored). About 2 minutes once the build is warm.
#
# Environment: BENCH_DURATION (default 8s) is the measured phase of each scenario;
# BENCH_ONLY="dispatch-closed ingest" runs only the named runs; RUST_LOG is passed to the
# server (default: its default, info).
set -euo pipefail
cd "$(dirname "$0")/.."
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
hex=$(head -c $((agents * 16 + 16)) /dev/urandom | od -An -v -tx1 | tr -d ' \n')
api_token=${hex:0:32}
{
  printf '{'
  for ((i = 0; i < agents; i++)); do
    [ "$i" -gt 0 ] && printf ','
    printf '"bench-%04d":"%s"' "$i" "${hex:$((32 + i * 32)):32}"
  done
  printf '}\n'
} >"$work/agents.json"
chmod 600 "$work/agents.json"

http_addr=""
grpc_addr=""

# Starts a server with a generous registry; sets server_pid, http_addr, grpc_addr.
start_server() {
  local log=$1
  "$server_bin" server --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --agent-tokens "$work/agents.json" --api-token "$api_token" \
    --max-tasks 1000000 2>"$log" &
  server_pid=$!
  local line=""
  for _ in $(seq 1 200); do
    line=$(grep -m1 'nodelink listening' "$log" 2>/dev/null || true)
    [ -n "$line" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "the server exited at start:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  if [ -z "$line" ]; then
    echo "the server did not report its addresses within 10 s" >&2
    return 1
  fi
  # "nodelink listening: HTTP on 127.0.0.1:P, gRPC (plaintext) on 127.0.0.1:Q"
  http_addr=$(sed -E 's/.*HTTP on ([0-9.]+:[0-9]+).*/\1/' <<<"$line")
  grpc_addr=$(sed -E 's/.* on ([0-9.]+:[0-9]+)[^0-9]*$/\1/' <<<"$line")
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
  if ! start_server "$out/$name.server.log"; then
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

{
  echo "nodelink bench: commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load generator on the same machine"
  echo
  shopt -s nullglob
  files=("$out"/*.json)
  if [ ${#files[@]} -gt 0 ]; then
    "$bench_bin" summary "${files[@]}"
  fi
} | tee "$out/summary.txt"
echo "reports: $out" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed runs: ${failed[*]}" >&2
  exit 1
fi
