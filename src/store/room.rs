//! How far a streaming fetch may run ahead of its consumer.
//!
//! A `pull` streams chunks from the registry to the db writer. If the link
//! is faster than the writer, the chunks would pile up in memory. Holding
//! back the *responses* would not do: a body left unread trips the
//! registry client's read timeout and minimum rate. So the *requests* are
//! held back instead: a batch fetch takes room for a request's bytes before
//! sending it, and the consumer gives room back as it uses the chunks.
//! While the consumer waits for a chunk, requests go out whatever the room:
//! the chunk it needs may be behind the ones filling the room, and waiting
//! for room then would wait forever.

use std::sync::Mutex;

/// The bytes a consumer has room for. Shared by the consumer (sync code)
/// and the fetch (async tasks).
#[derive(Debug)]
pub struct Room {
    capacity: u64,
    state: Mutex<RoomState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct RoomState {
    /// Room left; negative after a request larger than what was left.
    left: i64,
    /// Consumers waiting for a chunk: requests may overdraw meanwhile.
    waiting: usize,
    /// The consumer stopped: nothing waits for room any more.
    closed: bool,
}

impl Room {
    /// Room for `capacity` bytes.
    pub fn new(capacity: u64) -> Room {
        Room {
            capacity,
            state: Mutex::new(RoomState {
                left: capacity as i64,
                waiting: 0,
                closed: false,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until there is room (or the consumer waits for a chunk, or
    /// stopped), then takes `bytes` of it.
    pub async fn take(&self, bytes: u64) {
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.state();
                if state.left > 0 || state.waiting > 0 || state.closed {
                    state.left -= bytes as i64;
                    return;
                }
            }
            changed.await;
        }
    }

    /// Gives `bytes` back (never more than the capacity in all).
    pub fn give(&self, bytes: u64) {
        let mut state = self.state();
        state.left = (state.left + bytes as i64).min(self.capacity as i64);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The consumer starts (`true`) or stops waiting for a chunk.
    pub fn waiting(&self, waits: bool) {
        let mut state = self.state();
        match waits {
            true => state.waiting += 1,
            false => state.waiting = state.waiting.saturating_sub(1),
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// The consumer stopped: every wait for room ends.
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Whether `take(bytes)` completes before the runtime goes idle.
    fn takes_now(room: &Arc<Room>, bytes: u64) -> bool {
        let room = room.clone();
        runtime().block_on(async move {
            tokio::time::timeout(Duration::from_millis(50), room.take(bytes))
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_request_waits_for_room_the_consumer_gives_back() {
        let room = Arc::new(Room::new(100));
        assert!(takes_now(&room, 60));
        assert!(takes_now(&room, 60), "room was left: may overdraw");
        assert!(!takes_now(&room, 1), "no room left");
        room.give(30);
        assert!(takes_now(&room, 1), "room again");
    }

    #[test]
    fn a_waiting_consumer_or_a_closed_one_lets_requests_through() {
        let room = Arc::new(Room::new(10));
        assert!(takes_now(&room, 10));
        assert!(!takes_now(&room, 1));
        room.waiting(true);
        assert!(takes_now(&room, 1), "the consumer waits for a chunk");
        room.waiting(false);
        assert!(!takes_now(&room, 1));
        room.close();
        assert!(takes_now(&room, 1), "nobody consumes any more");
    }

    #[test]
    fn a_waiting_request_wakes_when_room_is_given() {
        let room = Arc::new(Room::new(10));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on({
            let room = room.clone();
            async move { room.take(10).await }
        });
        let waiter = rt.spawn({
            let room = room.clone();
            async move { room.take(5).await }
        });
        room.give(10);
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken")
                .unwrap()
        });
    }
}
