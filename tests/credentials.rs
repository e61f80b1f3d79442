//! Where credentials go, and what a user without them is told: the real
//! binary against tiny registries on 127.0.0.1, each logging every request
//! with the `Authorization` it carried. Credentials reach the registry and
//! nothing else (an upload `Location` or a blob redirect on another host
//! gets none, whatever the kind of credentials); a registry that wants
//! credentials the user did not give says how to give them (exit 7); a
//! token file others may read gets a warning.

mod common;
mod http_wire;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::*;
use http_wire::{ServerRequest as Request, read_request};
use mache_cachefs::hash::Hash;
use mache_cachefs::oci::{MANIFEST_TYPE, v1_digest};

const SCOPE: &str = "team";
const TOKEN: &str = "s3cret-token";
const REALM_TOKEN: &str = "realm-token";
const USER: &str = "ci";
const PASSWORD: &str = "hunter2";
/// `ci:hunter2`, as basic auth sends it.
const BASIC: &str = "Basic Y2k6aHVudGVyMg==";
/// What a user without credentials is told.
const NEEDED: &str = "the registry asks for credentials: give --token-file, set MACHE_CACHE_TOKEN, or log in with docker";

/// How a fake registry wants to be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Anyone may do anything.
    Open,
    /// `Bearer s3cret-token`; a `401` carries serve's challenge, whose
    /// realm is no URL.
    Token,
    /// A bearer token from `/token`, which wants `ci:hunter2`.
    Realm,
    /// `ci:hunter2` as basic auth.
    Basic,
    /// A bearer challenge whose `/token` answers this status to everyone.
    RealmRefuses(u16),
}

/// The kinds of credentials a user can have.
const KINDS: [Gate; 3] = [Gate::Token, Gate::Realm, Gate::Basic];

/// One request as a fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Blobs and manifests, shared by a registry and its storage host.
#[derive(Default)]
struct Content {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
}

/// Where a fake sends clients elsewhere.
#[derive(Default)]
struct Elsewhere {
    /// The base URL its upload `Location`s point at (else its own).
    uploads: Option<String>,
    /// The base URL a blob GET is redirected to with a `307`.
    blobs: Option<String>,
}

/// A registry on a loopback address, one request per connection.
struct Fake {
    addr: SocketAddr,
    gate: Gate,
    content: Arc<Mutex<Content>>,
    elsewhere: Mutex<Elsewhere>,
    seen: Mutex<Vec<Seen>>,
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: Vec<u8>) -> Reply {
        self.body = body;
        self
    }
}

impl Fake {
    /// Starts a fake on `ip` (any port) holding `content`.
    fn start(ip: &str, gate: Gate, content: Arc<Mutex<Content>>) -> Arc<Fake> {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let fake = Arc::new(Fake {
            addr: listener.local_addr().unwrap(),
            gate,
            content,
            elsewhere: Mutex::default(),
            seen: Mutex::default(),
        });
        let server = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far whose `METHOD path` contains `needle`.
    fn seen(&self, needle: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| format!("{} {}", s.method, s.path).contains(needle))
            .cloned()
            .collect()
    }

    fn serve(&self, stream: TcpStream) {
        let Some(request) = read_request(&stream) else {
            return;
        };
        self.seen.lock().unwrap().push(Seen {
            method: request.method.clone(),
            path: request.path.clone(),
            authorization: request.headers.get("authorization").cloned(),
        });
        let reply = self
            .refusal(&request)
            .unwrap_or_else(|| self.answer(&request));
        let mut head = format!(
            "HTTP/1.1 {} X\r\nConnection: close\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = &stream;
        let _ = out.write_all(head.as_bytes());
        if request.method != "HEAD" {
            let _ = out.write_all(&reply.body);
        }
    }

    /// The `401` (or a token endpoint's answer) for a request the gate
    /// stops; `None` when it may pass.
    fn refusal(&self, request: &Request) -> Option<Reply> {
        let presented = request.headers.get("authorization").map(String::as_str);
        let challenge = |value: String| Some(Reply::new(401).header("WWW-Authenticate", value));
        let realm = format!(r#"Bearer realm="{}/token",service="fake""#, self.url());
        match self.gate {
            Gate::Open => None,
            Gate::Token if presented == Some(&format!("Bearer {TOKEN}")) => None,
            Gate::Token => {
                challenge(r#"Bearer realm="mache-cachefs",service="mache-cachefs""#.into())
            }
            Gate::Realm if request.path == "/token" => Some(if presented == Some(BASIC) {
                Reply::new(200).body(format!(r#"{{"token":"{REALM_TOKEN}"}}"#).into_bytes())
            } else {
                Reply::new(401)
            }),
            Gate::Realm if presented == Some(&format!("Bearer {REALM_TOKEN}")) => None,
            Gate::Realm => challenge(realm),
            Gate::Basic if presented == Some(BASIC) => None,
            Gate::Basic => challenge(r#"Basic realm="fake""#.into()),
            Gate::RealmRefuses(status) if request.path == "/token" => Some(Reply::new(status)),
            Gate::RealmRefuses(_) => challenge(realm),
        }
    }

    /// Just enough of the distribution API for a build-cache/v1 push and pull.
    fn answer(&self, request: &Request) -> Reply {
        let mut content = self.content.lock().unwrap();
        let elsewhere = self.elsewhere.lock().unwrap();
        let method = request.method.as_str();
        let Some(rest) = request.path.strip_prefix("/v2/") else {
            return Reply::new(404);
        };
        if rest.is_empty() {
            return Reply::new(200).body(b"{}".to_vec());
        }
        if let Some((_, reference)) = rest.split_once("/manifests/") {
            if method == "PUT" {
                content
                    .manifests
                    .insert(reference.to_string(), request.body.clone());
                return Reply::new(201);
            }
            return match content.manifests.get(reference) {
                Some(bytes) => Reply::new(200)
                    .header("Content-Type", MANIFEST_TYPE)
                    .header("Docker-Content-Digest", v1_digest(&Hash::of(bytes)))
                    .body(bytes.clone()),
                None => Reply::new(404),
            };
        }
        if let Some((name, _)) = rest.split_once("/blobs/uploads/") {
            if method == "POST" {
                let base = elsewhere.uploads.clone().unwrap_or_else(|| self.url());
                let id = uuid::Uuid::new_v4();
                return Reply::new(202)
                    .header("Location", format!("{base}/v2/{name}/blobs/uploads/{id}"));
            }
            let digest = request
                .query
                .strip_prefix("digest=")
                .expect("a PUT names its digest")
                .replace("%3A", ":");
            content.blobs.insert(digest, request.body.clone());
            return Reply::new(201);
        }
        if let Some((_, digest)) = rest.split_once("/blobs/") {
            let Some(bytes) = content.blobs.get(digest) else {
                return Reply::new(404);
            };
            if method == "GET"
                && let Some(storage) = &elsewhere.blobs
            {
                return Reply::new(307).header("Location", format!("{storage}/{rest}"));
            }
            return Reply::new(200)
                .header("Docker-Content-Digest", digest)
                .body(bytes.clone());
        }
        Reply::new(404)
    }
}

/// A test's files: a db to push, a local store, a cache, a docker config
/// dir, a token file.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let scene = Scene {
            dir: tempfile::tempdir().unwrap(),
        };
        let sources = [
            Src::at("main.go", Some("go"), b"package main\n\nfunc main() {}\n"),
            Src::at("README.md", Some("markdown"), b"# readme\n"),
        ];
        make_db(&scene.path("mache.db"), &sources, None);
        std::fs::create_dir(scene.path("docker")).unwrap();
        scene.token_file(0o600);
        scene
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The token file, with `mode`.
    fn token_file(&self, mode: u32) -> PathBuf {
        let path = self.path("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Runs the binary on `registry` with the credentials `gate` wants
    /// (a token file, or a docker login), none for other gates.
    fn run(&self, registry: &Fake, gate: Gate, args: &[&str]) -> Output {
        let docker = self.path("docker");
        let login = match gate {
            Gate::Realm | Gate::Basic => format!(
                r#"{{"auths":{{"{}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#,
                registry.addr
            ),
            _ => "{}".to_string(),
        };
        std::fs::write(docker.join("config.json"), login).unwrap();
        let mut command = bin();
        command
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("DOCKER_CONFIG", &docker)
            .env_remove("MACHE_CACHE_TOKEN")
            .args(args)
            .args(["--remote", &registry.url(), "--scope", SCOPE]);
        if gate == Gate::Token {
            command.arg("--token-file").arg(self.path("token"));
        }
        command.output().unwrap()
    }

    fn push(&self, registry: &Fake, gate: Gate) -> Output {
        let (db, store) = (self.path("mache.db"), self.path("store"));
        self.run(
            registry,
            gate,
            &["push", "--db", s(&db), "--layout", "v1", s(&store)],
        )
    }

    fn pull(&self, registry: &Fake, gate: Gate) -> Output {
        let out = self.path("restored.db");
        let _ = std::fs::remove_file(&out);
        self.run(registry, gate, &["pull", "--force", "--out-db", s(&out)])
    }
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}: {stderr}", out.status.code());
    stderr
}

/// Asserts that `requests` were made and none carried credentials.
fn none_authorized(requests: &[Seen], what: &str) {
    assert!(!requests.is_empty(), "no {what} was made");
    let authorized: Vec<_> = requests
        .iter()
        .filter(|s| s.authorization.is_some())
        .collect();
    assert!(
        authorized.is_empty(),
        "{what} with credentials: {authorized:?}"
    );
}

/// Asserts that `requests` were made and each carried credentials.
fn all_authorized(requests: &[Seen], what: &str) {
    assert!(!requests.is_empty(), "no {what} was made");
    assert!(
        requests.iter().all(|s| s.authorization.is_some()),
        "{what} without credentials: {requests:?}"
    );
}

/// A registry on 127.0.0.1 and another host (127.0.0.2) sharing its content.
fn registry_and_storage(gate: Gate) -> (Arc<Fake>, Arc<Fake>) {
    let content = Arc::default();
    let registry = Fake::start("127.0.0.1", gate, Arc::clone(&content));
    let storage = Fake::start("127.0.0.2", Gate::Open, content);
    (registry, storage)
}

#[test]
fn an_upload_location_on_another_host_gets_no_credentials() {
    for gate in KINDS {
        let scene = Scene::new();
        let (registry, storage) = registry_and_storage(gate);
        registry.elsewhere.lock().unwrap().uploads = Some(storage.url());
        succeeded(&scene.push(&registry, gate));
        all_authorized(
            &registry.seen("POST /v2/mache/team/blobs/uploads/"),
            &format!("{gate:?}: upload start"),
        );
        none_authorized(
            &storage.seen("PUT /v2/mache/team/blobs/uploads/"),
            &format!("{gate:?}: upload on the other host"),
        );
        assert!(
            registry
                .seen("PUT /v2/mache/team/blobs/uploads/")
                .is_empty(),
            "{gate:?}: uploads went to the registry"
        );
    }
}

#[test]
fn a_blob_redirected_to_another_host_gets_no_credentials() {
    for gate in KINDS {
        let scene = Scene::new();
        let (registry, storage) = registry_and_storage(gate);
        succeeded(&scene.push(&registry, gate));
        registry.elsewhere.lock().unwrap().blobs = Some(format!("{}/v2", storage.url()));
        succeeded(&scene.pull(&registry, gate));
        all_authorized(
            &registry.seen("GET /v2/mache/team/blobs/"),
            &format!("{gate:?}: blob GET on the registry"),
        );
        none_authorized(
            &storage.seen("GET /v2/mache/team/blobs/"),
            &format!("{gate:?}: redirected blob GET"),
        );
    }
}

#[test]
fn a_registry_wanting_credentials_the_user_did_not_give_says_how_to_give_them() {
    let cases = [
        (Gate::Basic, "it asks for a user and password"),
        (Gate::Token, "it takes a bearer token"),
        (Gate::RealmRefuses(401), "the token endpoint answered 401"),
        (Gate::RealmRefuses(403), "the token endpoint answered 403"),
    ];
    for (gate, detail) in cases {
        let scene = Scene::new();
        let (registry, _) = registry_and_storage(gate);
        let out = scene.pull(&registry, Gate::Open);
        let stderr = assert_fails(&out, 7, NEEDED);
        assert!(
            stderr.contains(detail),
            "{gate:?}: {detail:?} not in {stderr}"
        );
    }
}

#[test]
fn a_token_file_others_can_read_gets_a_warning() {
    let scene = Scene::new();
    let (registry, _) = registry_and_storage(Gate::Token);
    let path = scene.token_file(0o600);
    let quiet = succeeded(&scene.push(&registry, Gate::Token));
    assert!(!quiet.contains("chmod"), "a private token file: {quiet}");
    scene.token_file(0o644);
    let warned = succeeded(&scene.pull(&registry, Gate::Token));
    let line = format!(
        "is open to group or others (mode 0644): chmod 600 {}",
        path.display()
    );
    assert_eq!(
        warned.lines().filter(|l| l.contains(&line)).count(),
        1,
        "one warning line: {warned}"
    );
    assert!(!warned.contains(TOKEN), "the token leaked: {warned}");
}
