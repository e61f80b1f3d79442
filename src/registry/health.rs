//! The health of one registry, shared by every call a client makes: a
//! circuit breaker in the manner of CernVM-FS's host health.
//!
//! - **Up**: calls go out; a failing call retries with backoff. Every
//!   attempt that fails because the registry itself is failing (refused,
//!   DNS, TLS, timed out, reset, `5xx`) extends a *failing streak*; any
//!   answer ends it.
//! - **Down**: once a streak has lasted [`Health::offline_after`] (the
//!   first failing read's short retry window: a registry restarting for a
//!   deploy comes back within it), or when a command chose to come up from
//!   the disk cache, the registry is down. Calls then fail at once, without
//!   touching the network, with the reason it went down; cached data keeps
//!   being served by the layers above.
//! - **Recovery**: while down, one background probe (`GET /v2/`, any HTTP
//!   answer counts, `401` included) runs with exponential backoff up to
//!   [`MAX_PROBE_INTERVAL`]; its first answer marks the registry up again,
//!   so cold reads succeed without a remount.
//!
//! This module is the pure state machine (times are passed in, so it is
//! tested without a network); the probe loop lives in [`super::client`].

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use crate::store::HealthReport;

/// The longest wait between two probes of a registry that is down.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// The first wait before probing a registry that went down.
pub const FIRST_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Why an attempt failed, for the failures that say the registry itself is
/// failing (as opposed to an answer about one blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was refused: nothing listens there.
    Refused,
    /// The host name does not resolve.
    Dns,
    /// The TLS handshake failed.
    Tls,
    /// No connection, answer or body within the timeouts.
    Timeout,
    /// The connection broke mid-way.
    Reset,
    /// The registry answered a server error (`5xx`).
    Server,
}

impl FailureKind {
    /// A few words for status and messages.
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::Refused => "connection refused",
            FailureKind::Dns => "host name does not resolve",
            FailureKind::Tls => "TLS handshake failed",
            FailureKind::Timeout => "timed out",
            FailureKind::Reset => "connection reset",
            FailureKind::Server => "server error",
        }
    }

    /// Whether another attempt could help: a TLS mismatch never heals by
    /// itself within a call.
    pub fn retryable(self) -> bool {
        self != FailureKind::Tls
    }
}

/// One registry's health; see the module docs.
#[derive(Debug)]
pub struct Health {
    offline_after: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `Some` while down: since when, and why.
    down: Option<(SystemTime, String)>,
    /// When the first attempt of the current failing streak started.
    failing_since: Option<Instant>,
    /// When the state last changed, for the report.
    changed: Option<SystemTime>,
    last_error: Option<String>,
    /// Whether a probe is running (at most one).
    probing: bool,
    outages: u64,
    probes: u64,
}

/// What a recorded failure did to the health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still up: the call may try again.
    StillUp,
    /// This failure marked the registry down; start a probe.
    WentDown,
    /// It was already down.
    AlreadyDown,
}

impl Health {
    /// A registry up, marked down once failures last `offline_after`.
    pub fn new(offline_after: Duration) -> Health {
        Health {
            offline_after,
            state: Mutex::new(State::default()),
        }
    }

    /// How long failures must last before the registry is marked down.
    pub fn offline_after(&self) -> Duration {
        self.offline_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(reason)` while the registry is down: calls fail with it at once.
    pub fn down_reason(&self) -> Option<String> {
        let state = self.lock();
        let (since, why) = state.down.as_ref()?;
        Some(format!(
            "{why} (down since {}; retrying in the background)",
            rfc3339(*since)
        ))
    }

    /// Records an answer: the registry is up.
    pub fn answered(&self) {
        let mut state = self.lock();
        state.failing_since = None;
        if state.down.take().is_some() {
            state.changed = Some(SystemTime::now());
            tracing::info!("the registry answers again: back online");
        }
    }

    /// Records a failed attempt that started at `started`, described by
    /// `error`; marks the registry down once the failing
    /// streak has lasted [`offline_after`](Self::offline_after).
    pub fn failed(&self, started: Instant, error: &str) -> Verdict {
        let mut state = self.lock();
        state.last_error = Some(error.to_string());
        if state.down.is_some() {
            return Verdict::AlreadyDown;
        }
        let since = *state.failing_since.get_or_insert(started);
        if since.elapsed() < self.offline_after {
            return Verdict::StillUp;
        }
        Self::go_down(&mut state, error.to_string());
        Verdict::WentDown
    }

    /// While a failing streak runs: how long until it has lasted
    /// [`offline_after`](Self::offline_after), so the next attempt can be
    /// the one that decides.
    pub fn until_down(&self) -> Option<Duration> {
        let state = self.lock();
        let since = state.failing_since?;
        Some(self.offline_after.saturating_sub(since.elapsed()))
    }

    /// Marks the registry down at once (a command that chose to come up
    /// from the disk cache): true if it was up, so a probe should start.
    pub fn mark_down(&self, error: &str) -> bool {
        let mut state = self.lock();
        state.last_error = Some(error.to_string());
        if state.down.is_some() {
            return false;
        }
        Self::go_down(&mut state, error.to_string());
        true
    }

    fn go_down(state: &mut State, why: String) {
        let now = SystemTime::now();
        tracing::info!(
            "{why}: the registry is marked down; cold reads fail at once until it answers again"
        );
        state.down = Some((now, why));
        state.changed = Some(now);
        state.failing_since = None;
        state.outages += 1;
    }

    /// Claims the one probe: true if the caller should run it.
    pub fn start_probing(&self) -> bool {
        let mut state = self.lock();
        !std::mem::replace(&mut state.probing, true)
    }

    /// Counts a probe; false once the registry is up (the probe stops).
    pub fn probing(&self) -> bool {
        let mut state = self.lock();
        if state.down.is_none() {
            state.probing = false;
            return false;
        }
        state.probes += 1;
        true
    }

    /// The state for the status file.
    pub fn report(&self) -> HealthReport {
        let state = self.lock();
        HealthReport {
            state: if state.down.is_some() { "down" } else { "up" },
            since: state.changed.map(rfc3339),
            last_error: state.last_error.clone(),
            outages: state.outages,
            probes: state.probes,
        }
    }
}

/// The wait before probe number `n` (0-based): doubling from
/// [`FIRST_PROBE_INTERVAL`] up to [`MAX_PROBE_INTERVAL`].
pub fn probe_interval(n: u32) -> Duration {
    FIRST_PROBE_INTERVAL
        .saturating_mul(1 << n.min(16))
        .min(MAX_PROBE_INTERVAL)
}

/// A time as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_streak_marks_it_down_only_once_it_lasts_the_window() {
        let health = Health::new(Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(health.failed(now, "refused"), Verdict::StillUp);
        assert!(health.down_reason().is_none());
        // An attempt that started 6 s ago and failed just now (a timeout).
        let long_ago = now - Duration::from_secs(6);
        let health = Health::new(Duration::from_secs(5));
        assert_eq!(health.failed(long_ago, "no answer"), Verdict::WentDown);
        let reason = health.down_reason().unwrap();
        assert!(reason.starts_with("no answer (down since "), "{reason}");
        assert_eq!(health.failed(now, "again"), Verdict::AlreadyDown);
        let report = health.report();
        assert_eq!((report.state, report.outages), ("down", 1));
        assert_eq!(report.last_error.as_deref(), Some("again"));
        assert!(report.since.is_some());
    }

    #[test]
    fn an_answer_ends_the_streak_and_brings_it_back_up() {
        let health = Health::new(Duration::from_secs(5));
        let old = Instant::now() - Duration::from_secs(4);
        health.failed(old, "503");
        health.answered();
        // The streak restarted: a failure 4 s old no longer counts from before.
        let recent = Instant::now() - Duration::from_secs(2);
        assert_eq!(health.failed(recent, "503"), Verdict::StillUp);
        assert!(health.mark_down("refused at start"));
        assert!(!health.mark_down("refused again"));
        assert!(health.start_probing());
        assert!(!health.start_probing(), "one probe at a time");
        assert!(health.probing());
        health.answered();
        assert!(!health.probing(), "the probe stops once up");
        assert!(health.start_probing(), "and a later outage probes again");
        let report = health.report();
        assert_eq!((report.state, report.probes), ("up", 1));
    }

    #[test]
    fn probes_back_off_to_a_ceiling() {
        assert_eq!(probe_interval(0), FIRST_PROBE_INTERVAL);
        assert_eq!(probe_interval(1), FIRST_PROBE_INTERVAL * 2);
        assert_eq!(probe_interval(40), MAX_PROBE_INTERVAL);
        assert!(FailureKind::Refused.retryable() && !FailureKind::Tls.retryable());
    }
}
