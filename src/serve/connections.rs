//! The server's own accept loop and HTTP/1.1 connections, with the limits
//! `axum::serve` lacks: a cap on open connections, a time limit on each
//! request's head, and one on idleness.
//!
//! - **Connection cap** (`--max-connections`): a connection is accepted
//!   only while fewer than the cap are open. Past it, new ones wait in the
//!   kernel's accept queue (then, when that is full, their SYNs go
//!   unanswered and the client's TCP retries), as nginx's
//!   `worker_connections`, HAProxy's `maxconn` and Go's `LimitListener` do:
//!   a burst becomes a short wait, not errors, and a waiting connection
//!   costs the server no file descriptor.
//! - **Header timeout** (`--header-timeout`): a request's head must arrive
//!   whole within this time, counted from the accept (first request) or
//!   from the first byte of the next one on a kept-alive connection.
//!   Trickling a header a byte at a time does not extend it (slowloris).
//! - **Idle timeout** (`--idle-timeout`): a kept-alive connection with no
//!   request is closed after this time, and so is one whose answer the
//!   client has stopped reading (a write blocked that long). A request
//!   body that stalls this long is refused by the handlers reading it
//!   ([`next_frame`](super::body::next_frame)).
//!
//! Each connection has a [`Clock`] fed by its socket (bytes read, writes
//! blocked) and by its requests (one in progress, from the head parsed to
//! the answer's last byte), and a watchdog that drops the connection, so
//! closing its socket, once the clock's deadline passes. While a request
//! is being handled there is no deadline: the store's own work (checking
//! a manifest of 100,000 layers) takes what it takes.
//!
//! On shutdown no connection is accepted any more (the listener is
//! closed), connections without a request in progress (idle, or with half
//! a head) close at once and each busy one after its answer; [`serve`]
//! returns when every connection has.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service;

/// Default `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT: &str = "20s";
/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: &str = "1024";

/// How long to wait before accepting again after `accept` failed (out
/// of file descriptors, most likely): connections close meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for a request's head to arrive whole.
    pub header_timeout: Duration,
    /// Time a connection may sit without a request, or with its answer
    /// unread; and a request body without a byte.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the accept queue.
    pub max_connections: usize,
}

/// Accepts connections on `listener` and serves `router` on each, within
/// `limits`, until `stop` turns true; then lets every connection finish
/// (idle ones close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    while let Some((stream, slot)) = accept(&listener, &slots, &stop).await {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        tokio::spawn(connection(
            stream,
            router.clone(),
            limits,
            stop.clone(),
            slot,
        ));
    }
    drop(listener);
    // Every connection holds a slot until it closes.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// The next connection, once a slot is free; `None` once stopped.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
            () = super::stopped(stop.clone()) => return None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = super::stopped(stop.clone()) => return None,
        };
        match accepted {
            Ok((stream, _)) => return Some((stream, slot)),
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                drop(slot);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection until it ends, its clock runs out, or (after a
/// stop) its last answer is sent.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let clock = Arc::new(Clock::new(limits));
    let io = TokioIo::new(Watched {
        stream,
        clock: clock.clone(),
    });
    let requests = clock.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::begin(requests.clone());
        let mut router = router.clone();
        async move {
            let response = router.call(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut expired = std::pin::pin!(clock.expired());
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            why = &mut expired => {
                tracing::debug!("closing a connection: {why}");
                return;
            }
            _ = stop.wait_for(|stopped| *stopped), if !stopping => {
                if clock.is_waiting() {
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection's deadline is counted from.
#[derive(Debug)]
struct Phase {
    /// Requests in progress (head parsed, answer not yet sent whole).
    busy: usize,
    /// When the connection last became free of requests.
    idle_since: Instant,
    /// When the head of the next request started (its first byte, or the
    /// accept for the first request).
    head_since: Option<Instant>,
    /// Since when a write has been blocked (the client not reading).
    write_blocked_since: Option<Instant>,
}

/// A connection's deadline, as its socket and requests move it.
#[derive(Debug)]
struct Clock {
    limits: ConnectionLimits,
    phase: Mutex<Phase>,
    /// Wakes the watchdog when the deadline may have come closer.
    moved: Notify,
}

impl Clock {
    fn new(limits: ConnectionLimits) -> Clock {
        let now = Instant::now();
        Clock {
            limits,
            phase: Mutex::new(Phase {
                busy: 0,
                idle_since: now,
                head_since: Some(now),
                write_blocked_since: None,
            }),
            moved: Notify::new(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Phase) -> bool) {
        let moved = change(&mut self.phase.lock().expect("clock lock"));
        if moved {
            self.moved.notify_one();
        }
    }

    /// The earliest deadline now running, and what it limits.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let phase = self.phase.lock().expect("clock lock");
        let waiting = match (phase.busy, phase.head_since) {
            (0, Some(since)) => Some((since + self.limits.header_timeout, "header timeout")),
            (0, None) => Some((phase.idle_since + self.limits.idle_timeout, "idle timeout")),
            _ => None,
        };
        let blocked = phase.write_blocked_since.map(|since| {
            (
                since + self.limits.idle_timeout,
                "answer unread (idle timeout)",
            )
        });
        [waiting, blocked]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Resolves, saying which, once a deadline has passed.
    async fn expired(&self) -> &'static str {
        loop {
            let moved = self.moved.notified();
            match self.deadline() {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = moved => {}
                    }
                }
                None => moved.await,
            }
        }
    }

    /// Whether no request is in progress (the connection waits for one).
    fn is_waiting(&self) -> bool {
        self.phase.lock().expect("clock lock").busy == 0
    }

    fn read(&self, bytes: usize) {
        if bytes > 0 {
            self.update(|phase| {
                let starts = phase.busy == 0 && phase.head_since.is_none();
                if starts {
                    phase.head_since = Some(Instant::now());
                }
                starts
            });
        }
    }

    fn write_blocked(&self, blocked: bool) {
        self.update(|phase| match (blocked, phase.write_blocked_since) {
            (true, None) => {
                phase.write_blocked_since = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                phase.write_blocked_since = None;
                false
            }
            _ => false,
        });
    }
}

/// A request in progress on its connection, until dropped.
struct Busy(Arc<Clock>);

impl Busy {
    fn begin(clock: Arc<Clock>) -> Busy {
        clock.update(|phase| {
            phase.busy += 1;
            phase.head_since = None;
            true
        });
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.update(|phase| {
            phase.busy -= 1;
            phase.idle_since = Instant::now();
            true
        });
    }
}

/// An answer's body, holding its request's [`Busy`] until sent or dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, telling its clock what moves.
struct Watched {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() {
            self.clock.read(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.clock.write_blocked(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.clock.write_blocked(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit on open files to its hard limit, so
/// `--max-connections` connections fit; warns when they still do not.
pub fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    /// Files the server needs beside its connections (store, logs, uploads).
    const RESERVE: u64 = 256;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::debug!("raising the open files limit: {e}");
            soft
        }
    };
    let needed = max_connections as u64 + RESERVE;
    if soft < needed {
        tracing::warn!(
            "the open files limit is {soft}, under the {needed} that --max-connections {max_connections} needs: past it, accepting waits for connections to close"
        );
    }
}
