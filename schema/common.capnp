# Shared types of the cloister build-cache/v1 lockfile (SPEC §2).
# Evolution rule: fields are only ever appended at the next ordinal;
# never renamed or removed.
@0xb0c0debaadc0deb0;

# A BLAKE3-256 digest: `bytes` is exactly 32 bytes.
struct Hash {
  bytes @0 :Data;
}
