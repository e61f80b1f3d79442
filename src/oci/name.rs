//! The OCI distribution grammar of names, as every layer checks it:
//! repository names (what `serve` accepts, and the repository half of a
//! store's `<repository>:<tag>` refs), their components (also a registry
//! scope's) and tags (also the store's own ref names).

use crate::error::{Error, Result};

/// Longest repository name accepted (OCI's recommended bound).
pub const MAX_REPOSITORY_NAME: usize = 255;

/// A repository name: at least two `/`-separated components (the first is
/// the producer), each an [`is_name_component`], at most
/// [`MAX_REPOSITORY_NAME`] characters. `serve` accepts only these, and a
/// local store's `<repository>:<tag>` refs name them.
pub fn is_repository_name(name: &str) -> bool {
    name.len() <= MAX_REPOSITORY_NAME
        && name.split('/').count() >= 2
        && name.split('/').all(is_name_component)
}

/// One repository name component of the OCI distribution grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. Shared by our client (scopes) and
/// `serve` (repository names).
pub fn is_name_component(component: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(&bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let separator = &component[i..];
        let skip = if separator.starts_with("__") {
            2
        } else if separator.starts_with(['.', '_']) {
            1
        } else {
            separator.bytes().take_while(|b| *b == b'-').count()
        };
        if skip == 0 {
            return false;
        }
        i += skip;
    }
}

/// A tag: OCI's `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, which is exactly what
/// a store's ref names are (single path components a shell user can type);
/// anything else is [`Error::BadRefName`].
pub fn check_tag(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRefName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_have_a_producer_and_oci_components() {
        for good in ["mache/team", "mache/a.b/c-d", "a/b__c", "x1/y--z"] {
            assert!(is_repository_name(good), "{good}");
        }
        for bad in [
            "mache",
            "Mache/team",
            "mache//x",
            "mache/../x",
            "/mache/x",
            "a/b_",
        ] {
            assert!(!is_repository_name(bad), "{bad}");
        }
        assert!(!is_repository_name(&format!(
            "a/{}",
            "b".repeat(MAX_REPOSITORY_NAME)
        )));
    }

    #[test]
    fn tags_follow_the_oci_grammar() {
        for good in ["latest", "v1.2", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(matches!(check_tag(bad), Err(Error::BadRefName(_))), "{bad}");
        }
    }
}
