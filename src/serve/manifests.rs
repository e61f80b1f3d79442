//! Manifests and tags: `PUT`, `GET`, `HEAD` and `DELETE` of
//! `…/manifests/<ref>`, and `GET …/tags/list`.
//!
//! A manifest is stored as a blob (by BLAKE3) and returned byte for byte;
//! its digest is `sha256:<BLAKE3>`, and a `GET` by digest accepts its true
//! SHA-256 too. A repository serves only the manifests pushed to it, plus
//! every bundle of the store's own refs (`refs/<tag>`, or the Go mache's
//! `mache.lock.bin` as `latest`): for a tag the repository does not have,
//! a build-cache/v1 manifest is synthesized from the store's bundle
//! ([`Manifest::for_bundle`]) and stored, so that what it names (config, sizes
//! index, the manifest itself) can be fetched like anything pushed. The
//! other way round, a bundle pushed by tag `latest` becomes the store's own
//! `latest` when the store holds all of it ([`Registry::follow_latest`]).
//!
//! A manifest being pushed is held in memory while it is read, parsed and
//! checked. What all of them hold together is bounded by
//! `--manifest-memory`: each `PUT` takes its announced `Content-Length`
//! from that budget before reading (its bytes as they come, without one),
//! and is refused with 429 `TOOMANYREQUESTS` when the budget lacks them,
//! so N concurrent pushes cannot take N × `--max-manifest-size`.

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::body::next_frame;
use super::budget::{Budget, Share};
use super::digest::{check_digest, parse_digest};
use super::errors::{Code, RegistryError, RegistryResult};
use super::registry::Registry;
use super::routes::Request;
use super::uploads::announced_len;
use super::{App, blocking};
use crate::error::Error;
use crate::hash::Hash;
use crate::lockfile::binary;
use crate::oci::{CONFIG_TYPE, Computed, Digest, MANIFEST_TYPE, Manifest, SIZES_KEY, check_tag};
use crate::store::local::{LATEST, LOCK_BIN};
use crate::store::{Bundle, SizeIndex};

/// What a manifest reference names.
enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// A digest (anything with a `:`) or a tag; `None` for neither. The
    /// OCI tag grammar, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, is exactly
    /// the store's ref names.
    fn parse(text: &str) -> RegistryResult<Option<Reference>> {
        if text.contains(':') {
            return parse_digest(text).map(|d| Some(Reference::Digest(d)));
        }
        let tag = check_tag(text).is_ok();
        Ok(tag.then(|| Reference::Tag(text.to_string())))
    }
}

/// `GET`/`HEAD <name>/manifests/<tag or digest>`.
pub async fn get(
    app: &App,
    name: &str,
    reference: &str,
    method: &Method,
) -> RegistryResult<Response> {
    let unknown = || unknown(name, reference);
    let parsed = Reference::parse(reference)?.ok_or_else(unknown)?;
    let registry = app.registry.clone();
    let owned_name = name.to_string();
    let found = blocking(move || find(&registry, &owned_name, parsed)).await?;
    let (hash, bytes) = found.ok_or_else(unknown)?;
    let response = Response::builder()
        .header(header::CONTENT_TYPE, MANIFEST_TYPE)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("Docker-Content-Digest", Digest::of_hash(&hash).to_string());
    let body = match *method {
        Method::HEAD => Body::empty(),
        _ => Body::from(bytes),
    };
    Ok(response.body(body).expect("valid response headers"))
}

/// `MANIFEST_UNKNOWN` for `reference` in repository `name`.
fn unknown(name: &str, reference: &str) -> RegistryError {
    RegistryError::new(
        Code::ManifestUnknown,
        format!("no manifest {reference:?} in {name}"),
    )
}

/// `DELETE <name>/manifests/<tag or digest>`: a tag goes; a digest takes
/// the manifest out of the repository with every tag of it naming it. 202;
/// the objects stay until `gc`. Only what the repository itself holds can
/// go (not the store's own refs it falls back to).
pub async fn delete(app: &App, name: &str, reference: &str) -> RegistryResult<Response> {
    let parsed = Reference::parse(reference)?.ok_or_else(|| unknown(name, reference))?;
    let registry = app.registry.clone();
    let owned_name = name.to_string();
    let removed = blocking(move || remove(&registry, &owned_name, parsed)).await?;
    if !removed {
        return Err(unknown(name, reference));
    }
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response headers"))
}

/// Removes what a reference names from repository `name`; returns
/// whether there was anything.
fn remove(registry: &Registry, name: &str, reference: Reference) -> RegistryResult<bool> {
    match reference {
        Reference::Tag(tag) => Ok(registry.remove_tag(name, &tag)?),
        Reference::Digest(digest) => {
            let Some(hash) = held_manifest(registry, name, &digest)? else {
                return Ok(false);
            };
            registry.remove_manifest(name, &hash)?;
            Ok(true)
        }
    }
}

/// The manifest a reference names in repository `name`, and its BLAKE3.
fn find(
    registry: &Registry,
    name: &str,
    reference: Reference,
) -> RegistryResult<Option<(Hash, Vec<u8>)>> {
    let hash = match reference {
        Reference::Digest(digest) => held_manifest(registry, name, &digest)?,
        Reference::Tag(tag) => match registry.tag(name, &tag)? {
            Some(hash) => Some(hash),
            None => return from_store(registry, name, &tag),
        },
    };
    match hash {
        Some(hash) => Ok(Some((hash, registry.read_blob(&hash)?))),
        None => Ok(None),
    }
}

/// The manifest `digest` names (by its BLAKE3 or its SHA-256), if the
/// repository holds it.
fn held_manifest(registry: &Registry, name: &str, digest: &Digest) -> RegistryResult<Option<Hash>> {
    let direct = digest.as_blake3();
    if registry.has_manifest(name, &direct) {
        return Ok(Some(direct));
    }
    let indexed = registry.resolve_blob(digest)?;
    Ok(indexed.filter(|hash| registry.has_manifest(name, hash)))
}

/// The synthesized manifest of the store's own bundle `tag`, stored with
/// its config and sizes index; `None` if the store has no such ref.
fn from_store(
    registry: &Registry,
    name: &str,
    tag: &str,
) -> RegistryResult<Option<(Hash, Vec<u8>)>> {
    let bundle = match registry.store().resolve(tag) {
        Ok(bundle) => bundle,
        Err(Error::RefMissing { .. } | Error::NothingPushed(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let chunk_lens = chunk_lens(registry, &bundle, tag)?;
    let sizes = bundle.sizes.as_ref().map(SizeIndex::to_json);
    let sizes_blob = sizes
        .as_deref()
        .map(|json| (Hash::of(json), json.len() as u64));
    let mut manifest = Manifest::for_bundle(
        &bundle.lockfile,
        &bundle.lockfile_bytes,
        &chunk_lens,
        sizes_blob.as_ref().map(|(hash, len)| (hash, *len)),
    );
    bundle.annotate(&mut manifest);
    let manifest = manifest.to_bytes();
    let hash = Hash::of(&manifest);
    let mut blobs = vec![bundle.lockfile_bytes.as_slice(), manifest.as_slice()];
    blobs.extend(sizes.as_deref());
    registry.put_blobs(&blobs)?;
    registry.add_manifest(name, &hash)?;
    Ok(Some((hash, manifest)))
}

/// Each source's chunk length: from the sizes index when there is one,
/// else the object's length on disk.
fn chunk_lens(registry: &Registry, bundle: &Bundle, tag: &str) -> RegistryResult<Vec<u64>> {
    let sources = &bundle.lockfile.sources;
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let known = bundle.sizes.as_ref().map(|s| s.entries[i].chunk_len);
            known
                .or_else(|| registry.store().object_len(&source.chunk_hash))
                .ok_or_else(|| {
                    RegistryError::new(
                        Code::ManifestUnknown,
                        format!(
                            "bundle {tag:?} of the store names chunk {} (source {:?}), which is not in the store",
                            source.chunk_hash, source.path
                        ),
                    )
                })
        })
        .collect()
}

/// `PUT <name>/manifests/<tag or digest>`.
pub async fn put(
    app: &App,
    name: &str,
    reference: &str,
    request: Request,
) -> RegistryResult<Response> {
    let reference = Reference::parse(reference)?.ok_or_else(|| {
        RegistryError::new(
            Code::ManifestInvalid,
            format!("invalid tag {reference:?}: [A-Za-z0-9_] then up to 127 of [A-Za-z0-9._-]"),
        )
    })?;
    let limit = app.limits.max_manifest;
    let announced = announced_len(&request.headers);
    if announced > limit {
        return Err(manifest_too_large(limit));
    }
    let mut held = app
        .manifest_memory
        .take(announced)
        .ok_or_else(|| memory_spent(&app.manifest_memory))?;
    let bytes = read_limited(request.body, limit, app.limits.idle_timeout, &mut held).await?;
    let manifest = parse(&bytes, &request.headers)?;
    let registry = app.registry.clone();
    let owned_name = name.to_string();
    let hash = blocking(move || {
        let _held = held;
        store(&registry, &owned_name, reference, &bytes, &manifest)
    })
    .await?;
    let digest = Digest::of_hash(&hash);
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response headers"))
}

/// Reads a whole manifest body, refusing one past `limit` bytes or past
/// what `held` can grow to in the manifest memory budget.
async fn read_limited(
    body: Body,
    limit: u64,
    idle: std::time::Duration,
    held: &mut Share,
) -> RegistryResult<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(frame) = next_frame(&mut stream, idle, Code::ManifestInvalid, "manifest").await?
    {
        let len = (bytes.len() + frame.len()) as u64;
        if len > limit {
            return Err(manifest_too_large(limit));
        }
        if !held.grow_to(len) {
            return Err(memory_spent(&held.budget()));
        }
        bytes.extend_from_slice(&frame);
    }
    Ok(bytes)
}

fn manifest_too_large(limit: u64) -> RegistryError {
    RegistryError::new(
        Code::BlobTooLarge,
        format!(
            "manifest is larger than the {limit} bytes this server accepts (--max-manifest-size)"
        ),
    )
}

/// 429: the manifests being pushed hold the whole memory budget.
fn memory_spent(budget: &Budget) -> RegistryError {
    RegistryError::busy(format!(
        "manifests being pushed hold {} of the {} bytes this server allows them          (--manifest-memory); retry later",
        budget.used(),
        budget.total()
    ))
}

/// Parses a manifest body: JSON, of the OCI image manifest media type (in
/// the body, or else in the `Content-Type`), schema version 2.
fn parse(bytes: &[u8], headers: &HeaderMap) -> RegistryResult<Manifest> {
    #[derive(Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let invalid = |e: serde_json::Error| {
        RegistryError::new(Code::ManifestInvalid, format!("manifest is not valid: {e}"))
    };
    let declared = serde_json::from_slice::<MediaType>(bytes).map_err(invalid)?;
    let media_type = declared.media_type.or_else(|| {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        Some(
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        )
    });
    if media_type.as_deref() != Some(MANIFEST_TYPE) {
        return Err(RegistryError::new(
            Code::ManifestMediatypeRefused,
            format!(
                "manifest media type {} is refused: only {MANIFEST_TYPE} is accepted",
                media_type.map_or("(none)".to_string(), |t| format!("{t:?}"))
            ),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(invalid)?;
    if manifest.schema_version != 2 {
        return Err(RegistryError::new(
            Code::ManifestInvalid,
            format!(
                "manifest schemaVersion is {}, expected 2",
                manifest.schema_version
            ),
        ));
    }
    Ok(manifest)
}

/// Checks a parsed manifest against the store and records it: the blobs
/// it names must be here; a build-cache/v1 config is also recorded as a
/// lockfile, and pushed by tag `latest`, may move the store's own `latest`
/// ([`Registry::follow_latest`]). Returns the manifest's BLAKE3.
fn store(
    registry: &Registry,
    name: &str,
    reference: Reference,
    bytes: &[u8],
    manifest: &Manifest,
) -> RegistryResult<Hash> {
    let _writing = registry.lock_shared()?;
    let computed = Computed::of(bytes);
    if let Reference::Digest(digest) = &reference {
        check_digest(&computed, digest, Code::DigestInvalid)?;
    }
    let config = registry
        .resolve_blob(&descriptor_digest(&manifest.config.digest, "config")?)?
        .ok_or_else(|| {
            RegistryError::new(
                Code::ManifestConfigMissing,
                format!(
                    "config blob {} is not here: push it before the manifest",
                    manifest.config.digest
                ),
            )
        })?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        let digest = descriptor_digest(&layer.digest, "layer")?;
        if registry.resolve_blob(&digest)?.is_none() {
            return Err(RegistryError::new(
                Code::ManifestLayerMissing,
                format!(
                    "layer {i} blob {} is not here: push every layer before the manifest",
                    layer.digest
                ),
            ));
        }
    }
    let lockfile = manifest.config.media_type == CONFIG_TYPE;
    if lockfile {
        record_lockfile(registry, &config, manifest)?;
    }
    registry.put_blobs(&[bytes])?;
    registry.add_manifest(name, &computed.blake3)?;
    if let Reference::Tag(tag) = &reference {
        registry.set_tag(name, tag, &computed.blake3)?;
        if lockfile && tag == LATEST {
            registry.follow_latest(&config)?;
        }
    }
    Ok(computed.blake3)
}

fn descriptor_digest(text: &str, what: &str) -> RegistryResult<Digest> {
    parse_digest(text).map_err(|e| {
        RegistryError::new(
            Code::ManifestInvalid,
            format!("manifest {what}: {}", e.message),
        )
    })
}

/// A build-cache/v1 config must be a lockfile; it is copied to
/// `lockfiles/<hash>.bin` (with the sizes index our annotation names, when
/// that blob is here and describes it), so the store can mount the bundle.
fn record_lockfile(registry: &Registry, config: &Hash, manifest: &Manifest) -> RegistryResult<()> {
    let bytes = registry.read_blob(config)?;
    let lockfile = binary::decode(&bytes).map_err(|e| {
        RegistryError::new(
            Code::ManifestInvalid,
            format!(
                "config blob {} is not a build-cache/v1 lockfile: {e}",
                manifest.config.digest
            ),
        )
    })?;
    let sizes = manifest
        .annotations
        .get(SIZES_KEY)
        .and_then(|text| parse_digest(text).ok())
        .map(|digest| registry.resolve_blob(&digest))
        .transpose()?
        .flatten()
        .map(|hash| registry.read_blob(&hash))
        .transpose()?
        .filter(|json| SizeIndex::from_json(json, config, lockfile.sources.len()).is_ok());
    registry.record_lockfile(config, &bytes, sizes.as_deref())?;
    Ok(())
}

/// `GET <name>/tags/list`: the repository's tags and the store's refs,
/// sorted, without repeats.
pub async fn tags(app: &App, name: &str) -> RegistryResult<Response> {
    let registry = app.registry.clone();
    let owned_name = name.to_string();
    let tags = blocking(move || {
        let mut tags = registry.tags(&owned_name)?;
        tags.extend(registry.store().own_refs()?.into_iter().map(|(tag, _)| tag));
        if registry.store().root().join(LOCK_BIN).is_file() {
            tags.push(LATEST.to_string());
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    })
    .await?;
    let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid response headers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_oci_tags_or_digests() {
        for tag in ["latest", "v1.2", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(
                matches!(Reference::parse(tag), Ok(Some(Reference::Tag(t))) if t == tag),
                "{tag}"
            );
        }
        for neither in ["", ".x", "-x", "a/b", &"a".repeat(129)] {
            assert!(matches!(Reference::parse(neither), Ok(None)), "{neither}");
        }
        let digest = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            Reference::parse(&digest),
            Ok(Some(Reference::Digest(_)))
        ));
        assert!(Reference::parse("sha256:0").is_err());
    }
}
