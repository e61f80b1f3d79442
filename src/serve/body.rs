//! Reading request bodies: frame by frame, each within the idle timeout,
//! so a client that stops sending mid-body is refused instead of holding
//! its upload (and its connection) forever.

use std::time::Duration;

use axum::body::{BodyDataStream, Bytes};
use futures_util::StreamExt;

use super::errors::{Code, RegistryError, RegistryResult};

/// The body's next frame (`None` at its end). A body cut short, or one
/// with no bytes for `idle`, is a `code` refusal naming `what` it was.
pub async fn next_frame(
    stream: &mut BodyDataStream,
    idle: Duration,
    code: Code,
    what: &str,
) -> RegistryResult<Option<Bytes>> {
    match tokio::time::timeout(idle, stream.next()).await {
        Ok(None) => Ok(None),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(e))) => Err(RegistryError::new(
            code,
            format!("{what} body cut short: {e}"),
        )),
        Err(_) => Err(RegistryError::new(
            code,
            format!(
                "{what} body stalled: no byte for {} (--idle-timeout)",
                humantime::format_duration(idle)
            ),
        )),
    }
}
