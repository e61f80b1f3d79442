#!/usr/bin/env bash
# Regenerates the checked-in Rust code for the lockfile schema:
#   schema/{common,cache}.capnp -> src/lockfile/generated/{common,cache}_capnp.rs
#
# The normal build never runs this; it needs the C++ `capnp` compiler
# (Debian package `capnproto`) and the `capnpc-rust` plugin, which is
# installed with cargo into $CAPNPC_ROOT (default: target/capnpc-tools) when
# it is missing. Run it after changing a .capnp file, then commit the output.
set -euo pipefail

CAPNPC_VERSION="0.27.0"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

if ! command -v capnp >/dev/null 2>&1; then
    echo "regen-schema: the capnp compiler is missing (apt-get install capnproto)" >&2
    exit 1
fi

plugin_root="${CAPNPC_ROOT:-$here/target/capnpc-tools}"
plugin="$plugin_root/bin/capnpc-rust"
if [ ! -x "$plugin" ] || ! grep -q "capnpc $CAPNPC_VERSION" "$plugin_root/.crates.toml" 2>/dev/null; then
    echo "regen-schema: installing capnpc $CAPNPC_VERSION into $plugin_root" >&2
    cargo install --locked capnpc --version "=$CAPNPC_VERSION" --root "$plugin_root"
fi

out="src/lockfile/generated"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

PATH="$plugin_root/bin:$PATH" capnp compile -I schema --src-prefix=schema \
    "-o$plugin:$work" schema/common.capnp schema/cache.capnp

# capnpc-rust names sibling schema modules `crate::<name>_capnp`; ours live
# at `crate::lockfile::generated::<name>_capnp`.
mkdir -p "$out"
for name in common_capnp cache_capnp; do
    sed -e 's/crate::\(common_capnp\|cache_capnp\)::/crate::lockfile::generated::\1::/g' \
        "$work/$name.rs" >"$out/$name.rs"
done
echo "regen-schema: wrote $out/common_capnp.rs and $out/cache_capnp.rs"
