#!/usr/bin/env bash
# Builds nodelink (the same debug build, gRPC's C core included, that scripts/test.sh uses:
# whichever runs first builds it for both) and starts `nodelink server --dev`: a server and
# a local agent with generated credentials. It prints the API token, the private files that
# hold it (for --api-token-file and `curl -H @FILE`), and two curl commands to try.
# Extra arguments go to the server (e.g. --http-addr 127.0.0.1:8081).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --bin nodelink
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/debug/nodelink" server --dev "$@"
