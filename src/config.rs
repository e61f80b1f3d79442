//! Where things live by default, and the config file.
//!
//! Precedence, highest first: command-line flags, environment
//! (`MACHE_CACHEFS_STORE`, `MACHE_CACHEFS_CONFIG`), the config file
//! (`$XDG_CONFIG_HOME/mache-cachefs/config.toml`), then XDG defaults:
//! the store at `$XDG_CACHE_HOME/mache-cachefs/store` and the mount cache at
//! `$XDG_CACHE_HOME/mache-cachefs/cache` (`~/.cache/...` when unset). The
//! bundle store is a cache in the XDG sense: everything in it can be rebuilt
//! from a `mache.db` or pulled again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The config file, as written by a user. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The local store directory.
    pub store: Option<PathBuf>,
    /// Where the mount keeps what it builds (synthesized dbs).
    pub cache_dir: Option<PathBuf>,
    /// A registry to push to / mount from (`https://host[:port]`).
    pub remote: Option<String>,
    /// The registry scope: repositories are `<producer>/<scope>`.
    pub scope: Option<String>,
    /// A file whose first line is the registry bearer token.
    pub token_file: Option<PathBuf>,
    /// Cap of the disk cache of registry chunks, e.g. "10G".
    pub cache_size: Option<String>,
    /// Registry timeouts in seconds (`--connect-timeout` and so on).
    pub connect_timeout: Option<f64>,
    pub read_timeout: Option<f64>,
    pub retry_budget: Option<f64>,
    pub offline_after: Option<f64>,
    /// The least rate of a registry body, e.g. "1K" (bytes per second).
    pub min_rate: Option<String>,
    /// The zstd level of packed pushes (`--compression-level`).
    pub compression_level: Option<i32>,
}

/// Registry timeouts the config file sets; flags win over them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfiguredTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub budget: Option<Duration>,
    pub offline_after: Option<Duration>,
    pub min_rate: Option<u64>,
}

/// Resolved settings every command starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub store: PathBuf,
    pub cache_dir: PathBuf,
    pub remote: Option<String>,
    pub scope: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Cap of the disk cache of registry chunks, in bytes.
    pub cache_size: Option<u64>,
    /// Registry timeouts from the config file.
    pub timeouts: ConfiguredTimeouts,
    /// The zstd level of packed pushes.
    pub compression_level: Option<i32>,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
}

/// The environment the defaults are computed from (a seam for tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

fn xdg_dir(env: &dyn Env, var: &str, fallback: &str) -> PathBuf {
    if let Some(dir) = env.var(var).filter(|d| Path::new(d).is_absolute()) {
        return PathBuf::from(dir);
    }
    let home = env.var("HOME").unwrap_or_else(|| "/".to_string());
    Path::new(&home).join(fallback)
}

/// The config file path: `$MACHE_CACHEFS_CONFIG`, else the XDG location.
pub fn config_path(env: &dyn Env) -> PathBuf {
    match env.var("MACHE_CACHEFS_CONFIG") {
        Some(path) => PathBuf::from(path),
        None => xdg_dir(env, "XDG_CONFIG_HOME", ".config").join("mache-cachefs/config.toml"),
    }
}

/// Loads settings. `explicit_config` (from `--config`) must exist; the
/// default config file is optional.
pub fn load(env: &dyn Env, explicit_config: Option<&Path>) -> Result<Settings> {
    let (path, required) = match explicit_config {
        Some(p) => (p.to_path_buf(), true),
        None => (config_path(env), env.var("MACHE_CACHEFS_CONFIG").is_some()),
    };
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => Some(parse(&path, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(e) => {
            return Err(Error::BadConfig {
                path,
                reason: e.to_string(),
            });
        }
    };
    let config_path = file.as_ref().map(|_| path.clone());
    let file = file.unwrap_or_default();
    let cache_home = xdg_dir(env, "XDG_CACHE_HOME", ".cache").join("mache-cachefs");
    let base = path.parent().unwrap_or(Path::new("/"));
    let store = env
        .var("MACHE_CACHEFS_STORE")
        .map(PathBuf::from)
        .or_else(|| file.store.map(|p| base.join(p)))
        .unwrap_or_else(|| cache_home.join("store"));
    let size = |key: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| {
                crate::units::parse_size(text).map_err(|reason| Error::BadConfig {
                    path: path.clone(),
                    reason: format!("{key}: {reason}"),
                })
            })
            .transpose()
    };
    let seconds = |key: &str, value: Option<f64>| {
        value
            .map(|secs| {
                positive_seconds(secs).ok_or_else(|| Error::BadConfig {
                    path: path.clone(),
                    reason: format!("{key}: a positive number of seconds"),
                })
            })
            .transpose()
    };
    let cache_size = size("cache_size", &file.cache_size)?;
    let compression_level = file
        .compression_level
        .map(|level| {
            crate::registry::frames::check_level(level).map_err(|reason| Error::BadConfig {
                path: path.clone(),
                reason: format!("compression_level: {reason}"),
            })
        })
        .transpose()?;
    let timeouts = ConfiguredTimeouts {
        connect: seconds("connect_timeout", file.connect_timeout)?,
        read: seconds("read_timeout", file.read_timeout)?,
        budget: seconds("retry_budget", file.retry_budget)?,
        offline_after: seconds("offline_after", file.offline_after)?,
        min_rate: size("min_rate", &file.min_rate)?,
    };
    Ok(Settings {
        cache_size,
        compression_level,
        timeouts,
        store,
        cache_dir: file
            .cache_dir
            .map_or_else(|| cache_home.join("cache"), |p| base.join(p)),
        remote: file.remote,
        scope: file.scope,
        token_file: file.token_file.map(|p| base.join(p)),
        config_path,
    })
}

/// A positive, finite number of seconds.
pub fn positive_seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
}

fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
    toml::from_str(text).map_err(|e| Error::BadConfig {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeEnv(HashMap<&'static str, String>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> FakeEnv {
        FakeEnv(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    #[test]
    fn defaults_follow_xdg() {
        let s = load(&env(&[("HOME", "/h")]), None).unwrap();
        assert_eq!(s.store, PathBuf::from("/h/.cache/mache-cachefs/store"));
        assert_eq!(s.cache_dir, PathBuf::from("/h/.cache/mache-cachefs/cache"));
        let s = load(&env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]), None).unwrap();
        assert_eq!(s.store, PathBuf::from("/x/mache-cachefs/store"));
        assert_eq!(s.config_path, None);
    }

    #[test]
    fn config_file_sets_store_remote_scope_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "store = \"s\"\nremote = \"https://r\"\nscope = \"team\"\ntoken_file = \"/t\"\n";
        std::fs::write(&path, text).unwrap();
        let s = load(&env(&[("HOME", "/h")]), Some(&path)).unwrap();
        assert_eq!(s.store, dir.path().join("s"));
        assert_eq!(s.remote.as_deref(), Some("https://r"));
        assert_eq!(s.scope.as_deref(), Some("team"));
        assert_eq!(s.token_file, Some(PathBuf::from("/t")));
        let overridden = load(&env(&[("MACHE_CACHEFS_STORE", "/e")]), Some(&path)).unwrap();
        assert_eq!(overridden.store, PathBuf::from("/e"));
    }

    #[test]
    fn registry_timeouts_come_from_the_config_and_must_be_positive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text =
            "connect_timeout = 2\nretry_budget = 7.5\noffline_after = 1\nmin_rate = \"4K\"\n";
        std::fs::write(&path, text).unwrap();
        let t = load(&env(&[]), Some(&path)).unwrap().timeouts;
        assert_eq!(t.connect, Some(Duration::from_secs(2)));
        assert_eq!(t.budget, Some(Duration::from_millis(7500)));
        assert_eq!(t.offline_after, Some(Duration::from_secs(1)));
        assert_eq!((t.read, t.min_rate), (None, Some(4096)));
        std::fs::write(&path, "retry_budget = 0\n").unwrap();
        let err = load(&env(&[]), Some(&path)).unwrap_err().to_string();
        assert!(err.contains("retry_budget"), "{err}");
    }

    #[test]
    fn bad_or_missing_explicit_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert!(load(&env(&[]), Some(&path)).is_err());
        std::fs::write(&path, "stroe = 1\n").unwrap();
        let err = load(&env(&[]), Some(&path)).unwrap_err().to_string();
        assert!(err.contains("stroe"), "{err}");
    }
}
