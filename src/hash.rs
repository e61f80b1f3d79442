//! BLAKE3-256 hashes: the one identity every format in a bundle uses.
//!
//! A [`Hash`](struct@Hash) is exactly 32 bytes. Its text forms are lowercase hex (object
//! paths, xattrs) and `blake3:<hex>` (TOML lockfiles, refs).

use std::fmt;

use crate::error::{Error, Result};

/// Prefix of the textual form used in TOML lockfiles and refs.
pub const TEXT_PREFIX: &str = "blake3:";

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Hashes `bytes` with BLAKE3.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes the file at `path` a block at a time, each block on every
    /// core: a memory map of the whole file would count it all in the
    /// process's RSS.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Hash> {
        use std::io::Read;
        const BLOCK: u64 = 16 << 20;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = blake3::Hasher::new();
        let mut block = Vec::with_capacity(BLOCK as usize);
        loop {
            block.clear();
            (&mut file).take(BLOCK).read_to_end(&mut block)?;
            if block.is_empty() {
                return Ok(Hash(*hasher.finalize().as_bytes()));
            }
            hasher.update_rayon(&block);
        }
    }

    /// Builds a hash from a byte slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::BadHashLength(bytes.len()))?;
        Ok(Hash(array))
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Hash> {
        let bad = || Error::BadHashText(text.chars().take(80).collect());
        if text.len() != 64 {
            return Err(bad());
        }
        let bytes = hex::decode(text).map_err(|_| bad())?;
        Hash::from_slice(&bytes).map_err(|_| bad())
    }

    /// The `blake3:<hex>` form.
    pub fn to_prefixed(&self) -> String {
        format!("{TEXT_PREFIX}{}", self.to_hex())
    }

    /// Parses the `blake3:<hex>` form.
    pub fn from_prefixed(text: &str) -> Result<Hash> {
        match text.strip_prefix(TEXT_PREFIX) {
            Some(hex) => Hash::from_hex(hex),
            None => Err(Error::BadHashText(text.chars().take(80).collect())),
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let h = Hash::of(b"abc");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(Hash::from_prefixed(&h.to_prefixed()).unwrap(), h);
        assert!(h.to_prefixed().starts_with("blake3:"));
    }

    #[test]
    fn a_file_hashes_as_its_bytes_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Hash::of_file(&path).unwrap(), Hash::of(&bytes));
    }

    #[test]
    fn rejects_wrong_lengths_and_prefixes() {
        assert!(matches!(
            Hash::from_slice(&[0; 31]),
            Err(Error::BadHashLength(31))
        ));
        assert!(Hash::from_hex("abcd").is_err());
        assert!(Hash::from_prefixed(&format!("sha256:{}", "0".repeat(64))).is_err());
        assert!(Hash::from_hex(&"g".repeat(64)).is_err());
    }
}
