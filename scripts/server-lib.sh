# Shared by scripts/bench.sh and scripts/soak.sh (sourced, not run): the credentials file a
# test server and its simulated agents share, and starting a server on free loopback ports.

# write_credentials FILE PREFIX COUNT: writes {"PREFIX<i>": "<random token>", ...} for i in
# 0..COUNT-1 (PREFIX is a printf format of i, e.g. bench-%04d) to FILE, mode 600, sets
# api_token to a fresh random token and writes it to api_token_file (next to FILE, mode 600)
# for the server's --api-token-file, which keeps it out of `ps`.
write_credentials() {
  local file=$1 format=$2 count=$3 i
  local hex
  hex=$(head -c $((count * 16 + 16)) /dev/urandom | od -An -v -tx1 | tr -d ' \n')
  api_token=${hex:0:32}
  {
    printf '{'
    for ((i = 0; i < count; i++)); do
      [ "$i" -gt 0 ] && printf ','
      printf "\"$format\":\"%s\"" "$i" "${hex:$((32 + i * 32)):32}"
    done
    printf '}\n'
  } >"$file"
  chmod 600 "$file"
  api_token_file="$(dirname "$file")/api-token"
  (umask 077 && printf '%s\n' "$api_token" >"$api_token_file")
}

# start_server LOG ARGS...: starts `$server_bin server` on free 127.0.0.1 ports with ARGS,
# logging to LOG; waits for its "nodelink listening" line and sets server_pid, http_addr and
# grpc_addr. Returns 1 (after saying why) if it exits or stays silent for 10 s.
start_server() {
  local log=$1 line=""
  shift
  "$server_bin" server --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 "$@" 2>"$log" &
  server_pid=$!
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
