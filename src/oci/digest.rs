//! Digests on the wire and the two hashes behind them.
//!
//! Every digest is `sha256:` and 64 hex digits, read two ways: in
//! build-cache/v1 the digits are the **BLAKE3** of the bytes (SPEC §6); in
//! the packed layout and from a standard OCI client they are the true
//! SHA-256. The text cannot say which, so a digest is a [`Digest`] of 32
//! bytes, and a body is hashed both ways ([`DualHasher`]) and accepted when
//! either hash is the one claimed ([`Computed::matches`]).

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::hash::Hash;

/// The only algorithm prefix on the wire.
pub const PREFIX: &str = "sha256:";

/// A parsed `sha256:<64 lowercase hex>` digest: 32 bytes that are either a
/// BLAKE3 or a SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses the canonical wire form, `sha256:` and 64 lowercase hex
    /// digits; anything else is [`Error::BadDigest`].
    pub fn parse(text: &str) -> Result<Digest> {
        let invalid = || Error::BadDigest(text.chars().take(80).collect());
        let hex = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| invalid())?;
        Ok(Digest(bytes))
    }

    /// The digest naming bytes by their BLAKE3 (build-cache/v1).
    pub fn of_hash(hash: &Hash) -> Digest {
        Digest(hash.0)
    }

    /// The digest naming `bytes` by their true SHA-256.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The same 32 bytes read as a BLAKE3.
    pub fn as_blake3(&self) -> Hash {
        Hash(self.0)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

/// A build-cache/v1 digest: BLAKE3 hex behind `sha256:` (SPEC §6).
pub fn v1_digest(hash: &Hash) -> String {
    Digest::of_hash(hash).to_string()
}

/// A true SHA-256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    Digest::sha256_of(bytes).to_string()
}

/// The BLAKE3 hash a build-cache/v1 digest carries, read as leniently as a
/// [`Hash`](struct@Hash) is (hex of either case); anything else is
/// [`Error::BadManifest`], since digests are read from manifests.
pub fn hash_of_digest(digest: &str) -> Result<Hash> {
    let hex = digest
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::BadManifest(format!("digest {digest:?} is not sha256:<hex>")))?;
    Hash::from_hex(hex)
        .map_err(|_| Error::BadManifest(format!("digest {digest:?} is not sha256:<64 hex>")))
}

/// Both hashes of a body, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Computed {
    /// BLAKE3: the object's name.
    pub blake3: Hash,
    /// The true SHA-256.
    pub sha256: [u8; 32],
    /// Length in bytes.
    pub len: u64,
}

impl Computed {
    /// Hashes a whole body at once.
    pub fn of(bytes: &[u8]) -> Computed {
        let mut hasher = DualHasher::default();
        hasher.update(bytes);
        hasher.finish()
    }

    /// Whether `claimed` is the BLAKE3 or the SHA-256 of the bytes.
    pub fn matches(&self, claimed: &Digest) -> bool {
        claimed.0 == self.blake3.0 || claimed.0 == self.sha256
    }
}

/// BLAKE3 and SHA-256 of a stream, in one pass.
#[derive(Default, Clone)]
pub struct DualHasher {
    blake3: blake3::Hasher,
    sha256: Sha256,
    len: u64,
}

impl fmt::Debug for DualHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DualHasher({} bytes)", self.len)
    }
}

impl DualHasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.blake3.update(bytes);
        self.sha256.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Both hashes of everything fed.
    pub fn finish(&self) -> Computed {
        Computed {
            blake3: Hash(*self.blake3.finalize().as_bytes()),
            sha256: self.sha256.clone().finalize().into(),
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_with_64_lowercase_hex() {
        let hex = "ab".repeat(32);
        let digest = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(digest.to_string(), format!("sha256:{hex}"));
        for bad in [
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha512:{hex}"),
            format!("blake3:{hex}"),
            format!("sha256:{}", &hex[..62]),
            "sha256:".to_string(),
        ] {
            let err = Digest::parse(&bad).unwrap_err();
            assert!(matches!(err, Error::BadDigest(_)), "{bad}");
        }
    }

    #[test]
    fn either_hash_matches_and_the_two_readings_differ() {
        let computed = Computed::of(b"hello");
        let blake3 = Digest::of_hash(&Hash::of(b"hello"));
        let sha256 = Digest::sha256_of(b"hello");
        assert!(computed.matches(&blake3) && computed.matches(&sha256));
        assert!(!computed.matches(&Digest([7; 32])));
        assert_eq!(v1_digest(&Hash::of(b"hello")), blake3.to_string());
        assert_eq!(sha256_digest(b"hello"), sha256.to_string());
        assert_eq!(
            hash_of_digest(&blake3.to_string()).unwrap(),
            Hash::of(b"hello")
        );
        assert!(hash_of_digest("blake3:00").is_err());
    }
}
