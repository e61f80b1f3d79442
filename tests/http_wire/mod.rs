//! A minimal HTTP/1.1 client over a plain `TcpStream` for the tests of
//! `serve` and of the distribution registry, so nothing of ours sits
//! between a test and the server it checks, and the parsing of answers;
//! and the other side, a request as the tests' own small servers read it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one request may stall before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A response as the wire carried it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The codes of an OCI error envelope, in order.
    pub fn error_codes(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first error of an OCI error envelope: `(code, message)`.
    pub fn error(&self) -> (String, String) {
        let json = self.json();
        let error = &json["errors"][0];
        (
            error["code"].as_str().unwrap_or_default().to_string(),
            error["message"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// One HTTP/1.1 request to `addr` on its own connection, no credentials
/// added; panics on an I/O error.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One HTTP/1.1 request (`Connection: close`). The body is written from
/// another thread while this one reads, so an answer the server sends
/// before taking the whole body (a 400 for a body too large) is still
/// read; an `Err` means no whole answer came (a refused connection, a
/// reset before the answer).
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone()?;
    let mut reader = stream;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // A failed write (the server answered early and closed) shows
            // up on the read side as a short or missing answer.
            // The write side stays open: Go's server takes a half-close
            // for a client gone and may cancel the request (a 499).
            let _ = writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(body));
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A reset after a whole answer arrived still counts.
                    return match parse_reply(&raw, method == "HEAD") {
                        Some(reply) if complete(&reply, &raw) => Ok(reply),
                        _ => Err(e),
                    };
                }
            }
        }
        parse_reply(&raw, method == "HEAD").ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "no whole answer: {:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(500)])
                ),
            )
        })
    })
}

/// Whether `raw` held the whole body `reply` announced.
fn complete(reply: &HttpReply, raw: &[u8]) -> bool {
    match reply.header("content-length").map(str::parse::<usize>) {
        Some(Ok(length)) => reply.body.len() >= length,
        _ => !raw.is_empty() && reply.header("transfer-encoding").is_none(),
    }
}

/// Parses a whole response as read from the socket; `None` if the head
/// (or a chunked body) is incomplete.
pub fn parse_reply(raw: &[u8], head_only: bool) -> Option<HttpReply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = match (head_only, chunked) {
        (true, _) => Vec::new(),
        (false, true) => dechunk(rest)?,
        (false, false) => rest.to_vec(),
    };
    Some(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// `sha256:<SHA-256 hex>`: the digest a registry checks.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `sha256:<BLAKE3 hex>`: a BLAKE3 hash passed off as SHA-256.
pub fn blake3_as_sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", blake3::hash(bytes).to_hex())
}

/// One request as a test server reads it off the wire.
#[derive(Debug)]
pub struct ServerRequest {
    pub method: String,
    /// The path and query as sent.
    pub target: String,
    pub path: String,
    pub query: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one request (its body by `Content-Length`); `None` if the
/// connection ends first.
pub fn read_request(stream: &TcpStream) -> Option<ServerRequest> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "test servers read bodies by Content-Length only"
    );
    let len = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(ServerRequest {
        method,
        target,
        path,
        query,
        headers,
        body,
    })
}
