#!/usr/bin/env bash
# Soak test (docs/RELIABILITY.md): a fresh server with short task retention takes a steady
# open-loop dispatch load for a long time, while its RSS and registry size are sampled into a
# CSV. Fails (exit 1) if a response is lost (the server completed fewer tasks than it created,
# or ignored a response), if the load generator missed a completion or saw it after its 10 s
# wait, if the RSS peak of the second half exceeds the first half's by more than the allowed
# growth, or if the registry grows beyond what retention allows. Loopback only.
#
# Environment (defaults):
#   DURATION=10m        measured dispatch phase (nodelink-bench syntax: 90s, 10m, 1h)
#   RATE=500            tasks/s offered (open loop)
#   PROFILE=release     release or debug build of nodelink and nodelink-bench
#   SAMPLE_EVERY=5      seconds between samples
#   CLEANUP_AGE=10      seconds a finished task stays queryable (server --cleanup-age)
#   CLEANUP_INTERVAL=2  seconds between sweeps (server --cleanup-interval)
#   RSS_GROWTH_PCT=10   allowed growth of the RSS peak, second half vs first half ...
#   RSS_SLACK_MB=4      ... or this many MB (10^6 bytes, as in docs/PERFORMANCE.md), whichever is larger
#   SOAK_OUT            output directory (default soak-results/<UTC date>-<commit>)
#   RUST_LOG            the server's log filter (default warn, plus nodelink::server at info
#                       for the "listening" line this script reads; info logs two lines per task)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/server-lib.sh
source scripts/server-lib.sh

duration=${DURATION:-10m}
rate=${RATE:-500}
profile=${PROFILE:-release}
sample_every=${SAMPLE_EVERY:-5}
cleanup_age=${CLEANUP_AGE:-10}
cleanup_interval=${CLEANUP_INTERVAL:-2}
growth_pct=${RSS_GROWTH_PCT:-10}
slack_mb=${RSS_SLACK_MB:-4}
target_dir=${CARGO_TARGET_DIR:-target}
agents=8

command -v curl >/dev/null || { echo "soak: needs curl" >&2; exit 1; }
case $profile in
  release) build_flags=(--release) ;;
  debug) build_flags=() ;;
  *) echo "soak: PROFILE must be release or debug, not $profile" >&2; exit 1 ;;
esac
echo "== cargo build ${build_flags[*]} (nodelink, nodelink-bench)" >&2
cargo build "${build_flags[@]}" --locked --bin nodelink --bin nodelink-bench >&2
server_bin="$target_dir/$profile/nodelink"
bench_bin="$target_dir/$profile/nodelink-bench"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit+dirty"
fi
out=${SOAK_OUT:-soak-results/$(date -u +%Y%m%dT%H%M%SZ)-$commit}
mkdir -p "$out"
work=$(mktemp -d)
server_pid=""
bench_pid=""

cleanup() {
  for pid in $bench_pid $server_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

write_credentials "$work/agents.json" 'soak-%d' "$agents"

# Short retention, so a registry that does not leak stays at about RATE x (age + interval).
RUST_LOG=${RUST_LOG:-warn,nodelink::server=info} start_server "$out/server.log" \
  --agent-tokens "$work/agents.json" --api-token-file "$api_token_file" \
  --cleanup-delay 1s --cleanup-age "${cleanup_age}s" --cleanup-interval "${cleanup_interval}s" \
  --data-dir "$work/data" ||
  { echo "soak: the server did not start" >&2; exit 1; }

metric() { # metric NAME: a sample's value from /metrics (summed over labels), or -1
  curl -s --max-time 5 -H "Authorization: Bearer $api_token" "http://$http_addr/metrics" |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { print f ? s : -1 }'
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status"; }

echo "== soak: $rate tasks/s for $duration ($profile build, commit $commit); samples in $out/samples.csv" >&2
"$bench_bin" dispatch --rate "$rate" --duration "$duration" --agents "$agents" \
  --http "$http_addr" --grpc "$grpc_addr" --api-token "$api_token" \
  --agent-tokens "$work/agents.json" --server-pid "$server_pid" --label soak --json \
  >"$out/bench.json" 2>"$out/bench.log" &
bench_pid=$!

start=$(date +%s)
echo "t_s,rss_kb,registry_tasks,threads" >"$out/samples.csv"
while kill -0 "$bench_pid" 2>/dev/null; do
  t=$(($(date +%s) - start))
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$server_pid/status")
  echo "$t,$(rss_kb),$(metric nodelink_tasks),$threads" >>"$out/samples.csv"
  for _ in $(seq 1 $((sample_every * 10))); do
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 0.1
  done
done
bench_ok=0
wait "$bench_pid" || bench_ok=$?
bench_pid=""
hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$server_pid/status")
ignored=$(metric nodelink_agent_responses_ignored_total)
# The server's own account, to tell a lost response (a task it never finished) from a
# completion the load generator saw too late or missed.
sleep 2
server_created=$(metric nodelink_tasks_created_total)
server_completed=$(curl -s --max-time 5 -H "Authorization: Bearer $api_token" "http://$http_addr/metrics" |
  awk '$1 == "nodelink_tasks_finished_total{status=\"completed\"}" { print $2 }')
server_finished=$(metric nodelink_tasks_finished_total)

# The figures, from the CSV and the bench report.
fig() { grep -oE "\"$1\":[0-9.eE+-]+" "$out/bench.json" | head -1 | cut -d: -f2; }
created=$(fig created)
completed=$(fig completed)
errors=$(grep -oE '"errors":\{[^}]*\}' "$out/bench.json" || echo '"errors":?')
# The registry fills for about CLEANUP_AGE + CLEANUP_INTERVAL; its growth is judged after that.
warmup=$((cleanup_age + cleanup_interval + 5))
read -r rss_start rss_mid rss_end rss_peak peak1 peak2 reg_min reg_max reg_max1 reg_max2 reg_n n < <(
  awk -F, -v w="$warmup" 'NR > 1 { t[++n] = $1; r[n] = $2; g[n] = $3 }
    END {
      half = t[n] / 2; rhalf = (w + t[n]) / 2; p1 = p2 = peak = 0; gmin = -1; gmax = gm1 = gm2 = 0
      for (i = 1; i <= n; i++) {
        if (r[i] > peak) peak = r[i]
        if (t[i] <= half) { if (r[i] > p1) p1 = r[i]; mid = r[i] } else if (r[i] > p2) p2 = r[i]
        if (t[i] >= w) {
          gn++
          if (t[i] <= rhalf) { if (g[i] > gm1) gm1 = g[i] } else if (g[i] > gm2) gm2 = g[i]
        }
        if (g[i] >= 0 && (gmin < 0 || g[i] < gmin)) gmin = g[i]
        if (g[i] > gmax) gmax = g[i]
      }
      print r[1], mid, r[n], peak, p1, p2, gmin, gmax, gm1, gm2, gn + 0, n
    }' "$out/samples.csv")

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; } # kB (KiB) to MB (10^6 bytes)
allowed_kb=$(awk -v p="$peak1" -v pct="$growth_pct" -v s="$slack_mb" \
  'BEGIN { a = p * pct / 100; b = s * 1e6 / 1024; printf "%d", (a > b ? a : b) }')
# Finished tasks live CLEANUP_AGE, plus up to one sweep interval, plus the in-flight ones.
registry_bound=$(awk -v r="$rate" -v a="$cleanup_age" -v i="$cleanup_interval" \
  'BEGIN { printf "%d", r * (a + i + 2) * 1.5 }')

verdict=PASS
reasons=()
notes=()
if [ "$bench_ok" -ne 0 ]; then reasons+=("nodelink-bench exited with $bench_ok (see $out/bench.log)"); fi
if [ -z "$server_created" ] || [ "$server_created" != "$server_completed" ]; then
  reasons+=("lost responses: the server created $server_created tasks and completed $server_completed ($server_finished finished)")
fi
if [ -z "$created" ] || [ "$created" != "$completed" ] || [[ $errors != '"errors":{}' ]]; then
  reasons+=("the load generator observed $completed of $created completions within its 10 s wait (bench $errors; see $out/bench.log)")
fi
if [ "$ignored" != 0 ]; then reasons+=("the server ignored $ignored agent responses"); fi
if [ "$((peak2 - peak1))" -gt "$allowed_kb" ]; then
  reasons+=("RSS grew: peak $(mb "$peak1") MB in the first half, $(mb "$peak2") MB in the second (allowed +$(mb "$allowed_kb") MB)")
fi
if [ "$reg_max" -gt "$registry_bound" ] || [ "$reg_min" -lt 0 ]; then
  reasons+=("registry not bounded: up to $reg_max tasks held (bound $registry_bound), min $reg_min")
fi
if [ "$reg_n" -lt 4 ]; then
  notes+=("too short to judge registry growth: under 4 samples after the ${warmup}s warm-up")
elif [ "$reg_max2" -gt $((reg_max1 + reg_max1 / 10 + rate)) ]; then
  reasons+=("registry grew: at most $reg_max1 tasks in the first half after warm-up, $reg_max2 in the second")
fi
[ ${#reasons[@]} -eq 0 ] || verdict=FAIL

{
  echo "nodelink soak: commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo) RAM, $profile build"
  echo "load:        $rate tasks/s for $duration ($agents agents), cleanup age ${cleanup_age}s, interval ${cleanup_interval}s"
  echo "tasks:       server: $server_created created, $server_completed completed, $server_finished finished; bench: $created created, $completed completions observed, $errors; ignored responses $ignored"
  echo "RSS (MB):    start $(mb "$rss_start"), mid $(mb "$rss_mid"), end $(mb "$rss_end"), peak $(mb "$rss_peak") (VmHWM $(mb "$hwm_kb")); half peaks $(mb "$peak1") / $(mb "$peak2")"
  echo "registry:    min $reg_min, max $reg_max tasks (after the ${warmup}s warm-up, half maxima $reg_max1 / $reg_max2; bound $registry_bound)"
  echo "samples:     $n, every ${sample_every}s ($out/samples.csv)"
  echo "verdict:     $verdict"
  for r in "${reasons[@]}" "${notes[@]}"; do echo "  - $r"; done
} | tee "$out/summary.txt"
[ "$verdict" = PASS ]
