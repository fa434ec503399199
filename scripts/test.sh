#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every unit and integration
# test (integration tests start real servers and agents on ephemeral 127.0.0.1 ports).
# The first run builds gRPC's C core (about 11 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo check --lib --no-default-features (the gRPC-free core the fuzz targets link)" >&2
cargo check --lib --no-default-features --locked
# fuzz/ is its own workspace, so nothing above compiles it. A check (no fuzzing, stable
# toolchain: libfuzzer-sys builds libFuzzer with the C++ compiler; only running the targets
# under cargo-fuzz needs nightly) keeps the targets in step with the crate's API.
echo "== cargo check of the fuzz targets (fuzz/)" >&2
cargo check --locked --manifest-path fuzz/Cargo.toml
echo "== docs/openapi.yaml is valid OpenAPI 3" >&2
if ! python3 -c "import openapi_spec_validator" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator >&2
fi
python3 -m openapi_spec_validator docs/openapi.yaml
echo "== cargo test" >&2
cargo test --all-targets --locked "$@"
