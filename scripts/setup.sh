#!/usr/bin/env bash
# Makes sure this machine can build nodelink: a Rust toolchain with clippy and rustfmt, and
# what grpcio needs to build gRPC's C core (cmake, pkg-config, a C++ compiler, OpenSSL
# headers). Installs what is missing with apt-get when run as root; otherwise stops with one
# line naming what to install. Sourced by dev.sh and test.sh; safe to run twice.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if ! pkg-config --exists openssl 2>/dev/null; then missing+=(libssl-dev); fi

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}: install them with 'sudo apt-get install ${missing[*]}' and run again" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain: install it from rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
for component in clippy rustfmt; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component" >&2
    else
      echo "setup: missing the $component component of the Rust toolchain: install it and run again" >&2
      exit 1
    fi
  fi
done
