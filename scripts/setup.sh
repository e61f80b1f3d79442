#!/usr/bin/env bash
# Installs what mache-cachefs needs to build, test, benchmark and mount,
# when it is missing: Debian packages (fuse3, sqlite3, attr, python3,
# docker-registry, ...)
# and the Rust components clippy and rustfmt. Safe to run again.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have fusermount3 || need+=(fuse3)
have sqlite3 || need+=(sqlite3)
have getfattr || need+=(attr)
have python3 || need+=(python3)
have hyperfine || need+=(hyperfine)
have mount || need+=(mount)
have gcc || need+=(gcc)
have pkg-config || need+=(pkg-config)
have rg || need+=(ripgrep)
have jq || need+=(jq)
have curl || need+=(curl)
have mountpoint || need+=(util-linux)
have runuser || need+=(util-linux)
have useradd || need+=(passwd)
# A real OCI registry (CNCF distribution) and bcrypt htpasswd entries for its tests.
have docker-registry || need+=(docker-registry)
have htpasswd || need+=(apache2-utils)
# The resilience benchmark drops packets with nftables in a network namespace.
have nft || need+=(nftables)
have ip || need+=(iproute2)
# The peer the registry benchmark compares with (content-addressed chunks, a lazy FUSE mount over HTTP).
have casync || need+=(casync)
# The WAN benchmark compares the bytes a pull downloads with `zstd -3` of the same chunks.
have zstd || need+=(zstd)

if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have cargo; then
  echo "setup: no Rust toolchain: install one from https://rustup.rs and run this again" >&2
  exit 1
fi
if have rustup; then
  for component in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi
