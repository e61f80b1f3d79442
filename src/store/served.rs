//! The tags `serve` keeps beside a local store, as the store itself reads
//! them. `serve` writes them through the paths defined here; the store
//! resolves a `<repository>:<tag>` ref through the tag's manifest to the
//! lockfile that is its config ([`LocalStore::served_lockfile`]), `refs`
//! lists them after its own, and `gc` keeps everything they reach
//! ([`LocalStore::served_reach`]).
//!
//! ```text
//! repositories/<name>/_tags/<tag>           "sha256:<manifest blake3 hex>\n"
//! repositories/<name>/_manifests/<b3 hex>   empty: the repository holds that manifest
//! sha256/<sha256 hex>                       "blake3:<hex>\n": a blob by its true SHA-256
//! ```
//!
//! A digest in a manifest is `sha256:` and 64 hex digits: the BLAKE3 of an
//! object (build-cache/v1), or else a true SHA-256 found through the
//! `sha256/` index (the packed layout, plain OCI clients):
//! [`LocalStore::object_of_digest`].

use std::fmt;
use std::fs;
use std::io::ErrorKind;

use super::LocalStore;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::oci::{
    CONFIG_TYPE, Manifest, PACKED_CONFIG_TYPE, check_tag, hash_of_digest, is_repository_name,
    v1_digest,
};

/// The directory of serve's repositories, in the store.
const REPOSITORIES: &str = "repositories";
/// A repository's tags, below its directory.
const TAGS: &str = "_tags";
/// A repository's manifest markers, below its directory.
const MANIFESTS: &str = "_manifests";

/// A tag serve keeps, named `<repository>:<tag>` among the store's refs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServedTag {
    /// The repository, e.g. `mache/team`.
    pub repository: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
}

impl ServedTag {
    /// Parses `<repository>:<tag>`, a repository name `serve` accepts and
    /// a tag; anything else is [`Error::BadServedRef`].
    pub fn parse(reference: &str) -> Result<ServedTag> {
        let bad = || Error::BadServedRef(reference.to_string());
        let (repository, tag) = reference.split_once(':').ok_or_else(bad)?;
        if !is_repository_name(repository) || check_tag(tag).is_err() {
            return Err(bad());
        }
        Ok(ServedTag {
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ServedTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// The file of tag `tag` of `repository`, relative to the store.
pub fn tag_path(repository: &str, tag: &str) -> String {
    format!("{REPOSITORIES}/{repository}/{TAGS}/{tag}")
}

/// The marker saying `repository` holds `manifest`, relative to the store.
pub fn marker_path(repository: &str, manifest: &Hash) -> String {
    format!(
        "{REPOSITORIES}/{repository}/{MANIFESTS}/{}",
        manifest.to_hex()
    )
}

/// The `sha256/` index entry of a blob, relative to the store.
pub fn sha256_path(sha256: &[u8; 32]) -> String {
    format!("sha256/{}", hex::encode(sha256))
}

/// What one served tag keeps alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The manifest the tag points at.
    pub manifest: Hash,
    /// Every blob the manifest names (config, layers, our sizes index)
    /// that is an object here.
    pub blobs: Vec<Hash>,
    /// The config, when it is a lockfile (a bundle's).
    pub lockfile: Option<Hash>,
}

impl LocalStore {
    /// Every tag serve keeps, sorted by repository, then tag. Only names:
    /// nothing is read.
    pub fn served_tags(&self) -> Result<Vec<ServedTag>> {
        let top = self.root().join(REPOSITORIES);
        let mut found = Vec::new();
        let mut pending = vec![top.clone()];
        while let Some(dir) = pending.pop() {
            for entry in read_dir(&dir)? {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                if name == TAGS {
                    let repository = dir.strip_prefix(&top).unwrap_or(&dir);
                    let repository = repository.to_string_lossy();
                    found.extend(self.repository_tags(&repository)?.into_iter().map(|tag| {
                        ServedTag {
                            repository: repository.to_string(),
                            tag,
                        }
                    }));
                } else if name != MANIFESTS {
                    pending.push(entry.path());
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The tags of `repository`, sorted; none for a repository that is not
    /// here (or not a valid name).
    pub fn repository_tags(&self, repository: &str) -> Result<Vec<String>> {
        if !is_repository_name(repository) {
            return Ok(Vec::new());
        }
        let dir = self.root().join(REPOSITORIES).join(repository).join(TAGS);
        let mut tags: Vec<String> = read_dir(&dir)?
            .into_iter()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|tag| check_tag(tag).is_ok())
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// The manifest tag `tag` of `repository` points at; `None` when there
    /// is no such tag.
    pub fn served_manifest(&self, repository: &str, tag: &str) -> Result<Option<Hash>> {
        let relative = tag_path(repository, tag);
        let Some(text) = self.read_text(&relative)? else {
            return Ok(None);
        };
        let hash = hash_of_digest(text.trim()).map_err(|_| Error::MalformedStoreFile {
            path: relative.into(),
            reason: "a tag holds sha256:<64 hex digits>".to_string(),
        })?;
        Ok(Some(hash))
    }

    /// The object the 32 bytes of a `sha256:` digest name, if present: read
    /// as its BLAKE3 first, then through the `sha256/` index.
    pub fn object_of_digest(&self, digest: &[u8; 32]) -> Result<Option<Hash>> {
        let direct = Hash(*digest);
        if self.object_len(&direct).is_some() {
            return Ok(Some(direct));
        }
        let relative = sha256_path(digest);
        let Some(text) = self.read_text(&relative)? else {
            return Ok(None);
        };
        let indexed = Hash::from_prefixed(text.trim()).map_err(|_| Error::MalformedStoreFile {
            path: relative.into(),
            reason: "an index entry holds blake3:<64 hex digits>".to_string(),
        })?;
        Ok(Some(indexed).filter(|hash| self.object_len(hash).is_some()))
    }

    /// The lockfile a served tag names: the object its manifest's config
    /// is. A missing tag is [`Error::RefMissing`]; a manifest whose config
    /// is not a lockfile, [`Error::BadManifest`]; a config not here,
    /// [`Error::BlobMissing`].
    pub fn served_lockfile(&self, tag: &ServedTag) -> Result<Hash> {
        let (manifest, named) = self
            .read_served(tag)?
            .ok_or_else(|| self.ref_missing(&tag.to_string()))?;
        if !named.config_is_lockfile() {
            return Err(Error::BadManifest(format!(
                "{tag} names manifest {}, whose config is {:?}, not a mache lockfile \
                 ({CONFIG_TYPE} or {PACKED_CONFIG_TYPE})",
                v1_digest(&manifest),
                named.config.media_type,
            )));
        }
        self.object_of_digest_text(&named.config.digest)?
            .ok_or_else(|| Error::BlobMissing {
                what: "config",
                digest: named.config.digest.clone(),
                store: self.describe(),
            })
    }

    /// What a served tag keeps alive, read strictly (for `gc`: an
    /// unreadable manifest is an error, never "nothing"); `None` when the
    /// tag went meanwhile.
    pub fn served_reach(&self, tag: &ServedTag) -> Result<Option<Reach>> {
        let Some((manifest, named)) = self.read_served(tag)? else {
            return Ok(None);
        };
        let mut blobs = Vec::new();
        for digest in named.digests() {
            blobs.extend(self.object_of_digest_text(digest)?);
        }
        let lockfile = match named.config_is_lockfile() {
            true => self.object_of_digest_text(&named.config.digest)?,
            false => None,
        };
        Ok(Some(Reach {
            manifest,
            blobs,
            lockfile,
        }))
    }

    /// The manifest a served tag points at, verified, and what it names;
    /// `None` when there is no such tag.
    fn read_served(&self, tag: &ServedTag) -> Result<Option<(Hash, Manifest)>> {
        let Some(manifest) = self.served_manifest(&tag.repository, &tag.tag)? else {
            return Ok(None);
        };
        let bytes = self.read_verified(&manifest).map_err(|e| match e {
            Error::ObjectMissing { store, .. } => Error::BlobMissing {
                what: "manifest",
                digest: v1_digest(&manifest),
                store,
            },
            other => other,
        })?;
        let named = serde_json::from_slice(&bytes).map_err(|e| {
            Error::BadManifest(format!(
                "{tag} names manifest {}, which is not an OCI image manifest: {e}",
                v1_digest(&manifest)
            ))
        })?;
        Ok(Some((manifest, named)))
    }

    /// [`object_of_digest`](Self::object_of_digest) of a digest's text;
    /// `None` for text that is not `sha256:` and 64 hex digits.
    fn object_of_digest_text(&self, digest: &str) -> Result<Option<Hash>> {
        match hash_of_digest(digest) {
            Ok(hash) => self.object_of_digest(&hash.0),
            Err(_) => Ok(None),
        }
    }

    /// A small file of the store, if present.
    fn read_text(&self, relative: &str) -> Result<Option<String>> {
        let path = self.root().join(relative);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// The entries of `dir`; none when it does not exist.
fn read_dir(dir: &std::path::Path) -> Result<Vec<fs::DirEntry>> {
    let context = || format!("reading {}", dir.display());
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map_err(|e| Error::io(context(), e)))
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(context(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_refs_are_a_repository_and_a_tag() {
        let tag = ServedTag::parse("mache/team:v1").unwrap();
        assert_eq!(
            (tag.repository.as_str(), tag.tag.as_str()),
            ("mache/team", "v1")
        );
        assert_eq!(tag.to_string(), "mache/team:v1");
        for bad in [
            "mache:v1",
            "Mache/team:v1",
            "mache/team:",
            "mache/team:.x",
            "mache/../x:v1",
            "/mache/team:v1",
            "mache/team:a:b",
        ] {
            assert!(
                matches!(ServedTag::parse(bad), Err(Error::BadServedRef(_))),
                "{bad}"
            );
        }
    }

    /// A store holding `config` as an object and, at `mache/team:<tag>`, a
    /// manifest naming it by `digest` with `media_type`.
    fn store_with_tag(
        dir: &std::path::Path,
        tag: &str,
        media_type: &str,
        config: &[u8],
        digest: &str,
    ) -> LocalStore {
        use crate::store::local::Object;
        let store = LocalStore::create(dir).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": media_type, "digest": digest, "size": config.len()},
            "layers": [],
        });
        let objects = [
            Object::new(config.to_vec()),
            Object::new(manifest.to_string().into_bytes()),
        ];
        store.put_all(&objects.iter().collect::<Vec<_>>()).unwrap();
        let text = format!("{}\n", v1_digest(&objects[1].hash()));
        store
            .write_file(&tag_path("mache/team", tag), text.as_bytes())
            .unwrap();
        store
    }

    #[test]
    fn a_packed_config_resolves_through_the_sha256_index() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let config = b"lockfile bytes";
        let sha256: [u8; 32] = sha2::Sha256::digest(config).into();
        let digest = crate::oci::sha256_digest(config);
        let store = store_with_tag(dir.path(), "p", PACKED_CONFIG_TYPE, config, &digest);
        let tag = ServedTag::parse("mache/team:p").unwrap();
        assert!(
            matches!(
                store.served_lockfile(&tag),
                Err(Error::BlobMissing { what: "config", .. })
            ),
            "not indexed yet"
        );
        let index = format!("{}\n", Hash::of(config).to_prefixed());
        store
            .write_file(&sha256_path(&sha256), index.as_bytes())
            .unwrap();
        assert_eq!(store.served_lockfile(&tag).unwrap(), Hash::of(config));
        assert_eq!(store.served_tags().unwrap(), std::slice::from_ref(&tag));
        let reach = store.served_reach(&tag).unwrap().unwrap();
        assert_eq!(reach.lockfile, Some(Hash::of(config)));
        assert_eq!(reach.blobs, [Hash::of(config)]);
    }

    #[test]
    fn a_config_that_is_no_lockfile_and_a_missing_tag_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let config = b"{}";
        let digest = v1_digest(&Hash::of(config));
        let store = store_with_tag(
            dir.path(),
            "img",
            "application/vnd.oci.empty.v1+json",
            config,
            &digest,
        );
        let image = ServedTag::parse("mache/team:img").unwrap();
        let err = store.served_lockfile(&image).unwrap_err();
        assert!(
            matches!(&err, Error::BadManifest(m) if m.contains("not a mache lockfile")),
            "{err}"
        );
        assert_eq!(store.refs().unwrap(), [], "an image is not listed");
        let reach = store.served_reach(&image).unwrap().unwrap();
        assert_eq!((reach.blobs.len(), reach.lockfile), (1, None));
        let missing = store
            .served_lockfile(&ServedTag::parse("mache/x:y").unwrap())
            .unwrap_err();
        assert!(matches!(missing, Error::RefMissing { .. }));
        assert!(
            missing.to_string().contains("(refs: mache/team:img)"),
            "{missing}"
        );
    }
}
