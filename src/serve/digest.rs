//! Digests on the wire and the two hashes behind them.
//!
//! A build-cache/v1 digest is `sha256:` + the **BLAKE3** hex of the bytes
//! (SPEC §6); a standard OCI client sends `sha256:` + the true SHA-256. The
//! text cannot say which, so uploads are hashed both ways ([`DualHasher`])
//! and a digest is accepted when either hash equals it
//! ([`Computed::check`]). Objects are always named by their BLAKE3.

use sha2::{Digest as _, Sha256};

use super::errors::{Code, RegistryError, RegistryResult};
use crate::hash::Hash;

/// The only algorithm prefix on the wire.
const PREFIX: &str = "sha256:";

/// A parsed `sha256:<64 lowercase hex>` digest: 32 bytes that are either a
/// BLAKE3 or a SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses the wire form; anything else is `DIGEST_INVALID`.
    pub fn parse(text: &str) -> RegistryResult<Digest> {
        let invalid = || {
            RegistryError::new(
                Code::DigestInvalid,
                format!(
                    "invalid digest {:?}: expected sha256: and 64 lowercase hex digits",
                    text.chars().take(80).collect::<String>()
                ),
            )
        };
        let hex = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| invalid())?;
        Ok(Digest(bytes))
    }

    /// The digest naming an object by its BLAKE3.
    pub fn of_hash(hash: &Hash) -> Digest {
        Digest(hash.0)
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

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

/// Both hashes of a body, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Computed {
    /// BLAKE3: the object's name.
    pub blake3: Hash,
    /// The true SHA-256, for the `sha256/` index.
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

    /// Accepts `claimed` if it is the BLAKE3 or the SHA-256 of the bytes;
    /// otherwise a `code` refusal naming the claim and both hashes.
    pub fn check(&self, claimed: &Digest, code: Code) -> RegistryResult<()> {
        if claimed.0 == self.blake3.0 || claimed.0 == self.sha256 {
            return Ok(());
        }
        let blake3 = format!("blake3:{}", self.blake3.to_hex());
        let sha256 = format!("sha256:{}", hex::encode(self.sha256));
        Err(RegistryError::new(
            code,
            format!(
                "digest {claimed} matches neither hash of the {} bytes received: {blake3}, {sha256}",
                self.len
            ),
        )
        .with_detail(serde_json::json!({
            "claimed": claimed.to_string(),
            "blake3": blake3,
            "sha256": sha256,
            "size": self.len,
        })))
    }
}

/// BLAKE3 and SHA-256 of a stream, in one pass.
#[derive(Default, Clone)]
pub struct DualHasher {
    blake3: blake3::Hasher,
    sha256: Sha256,
    len: u64,
}

impl std::fmt::Debug for DualHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
            assert_eq!(err.code, Code::DigestInvalid, "{bad}");
        }
    }

    #[test]
    fn either_hash_is_accepted_and_a_mismatch_names_both() {
        let computed = Computed::of(b"hello");
        let blake3 = Digest::of_hash(&Hash::of(b"hello"));
        let sha256 = Digest(Sha256::digest(b"hello").into());
        assert!(computed.check(&blake3, Code::BlobDigestMismatch).is_ok());
        assert!(computed.check(&sha256, Code::BlobDigestMismatch).is_ok());
        let err = computed
            .check(&Digest([7; 32]), Code::BlobDigestMismatch)
            .unwrap_err();
        assert_eq!(err.code, Code::BlobDigestMismatch);
        assert!(err.message.contains(&format!("blake3:{}", blake3.hex())));
        assert!(err.message.contains(&format!("sha256:{}", sha256.hex())));
        assert!(err.message.contains(&Digest([7; 32]).to_string()));
    }
}
