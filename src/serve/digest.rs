//! Digests as `serve` answers about them. What a digest is, and the two
//! hashes behind it, is [`crate::oci::digest`]'s; here a digest that does
//! not parse is refused with `DIGEST_INVALID` ([`parse_digest`]), and bytes
//! that hash to neither reading of the digest claimed for them with the
//! caller's code, naming the claim and both hashes ([`check_digest`]).

use super::errors::{Code, RegistryError, RegistryResult};
use crate::oci::{Computed, Digest};

/// Parses the wire form; anything else is `DIGEST_INVALID`.
pub fn parse_digest(text: &str) -> RegistryResult<Digest> {
    Digest::parse(text).map_err(|e| RegistryError::new(Code::DigestInvalid, e.to_string()))
}

/// Accepts `claimed` if it is the BLAKE3 or the SHA-256 of the bytes;
/// otherwise a `code` refusal naming the claim and both hashes.
pub fn check_digest(computed: &Computed, claimed: &Digest, code: Code) -> RegistryResult<()> {
    if computed.matches(claimed) {
        return Ok(());
    }
    let blake3 = computed.blake3.to_prefixed();
    let sha256 = Digest(computed.sha256).to_string();
    Err(RegistryError::new(
        code,
        format!(
            "digest {claimed} matches neither hash of the {} bytes received: {blake3}, {sha256}",
            computed.len
        ),
    )
    .with_detail(serde_json::json!({
        "claimed": claimed.to_string(),
        "blake3": blake3,
        "sha256": sha256,
        "size": computed.len,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn a_bad_digest_is_digest_invalid() {
        let err = parse_digest(&format!("sha256:{}", "AB".repeat(32))).unwrap_err();
        assert_eq!(err.code, Code::DigestInvalid);
        assert!(err.message.contains("64 lowercase hex"), "{}", err.message);
    }

    #[test]
    fn either_hash_is_accepted_and_a_mismatch_names_both() {
        let computed = Computed::of(b"hello");
        let blake3 = Digest::of_hash(&Hash::of(b"hello"));
        let sha256 = Digest::sha256_of(b"hello");
        assert!(check_digest(&computed, &blake3, Code::BlobDigestMismatch).is_ok());
        assert!(check_digest(&computed, &sha256, Code::BlobDigestMismatch).is_ok());
        let err = check_digest(&computed, &Digest([7; 32]), Code::BlobDigestMismatch).unwrap_err();
        assert_eq!(err.code, Code::BlobDigestMismatch);
        assert!(err.message.contains(&format!("blake3:{}", blake3.hex())));
        assert!(err.message.contains(&format!("sha256:{}", sha256.hex())));
        assert!(err.message.contains(&Digest([7; 32]).to_string()));
    }
}
