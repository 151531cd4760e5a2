//! Commit notifications per partition, for long-polling fetches.
//!
//! A waiter must call [`Notifier::subscribe`] *before* it reads the end offset, then wait
//! on the receiver: a commit landing between the read and the wait is not missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Watchers = HashMap<(i64, u32), watch::Sender<u64>>;

#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Arc<Mutex<Watchers>>,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn subscribe(&self, topic_id: i64, partition: u32) -> watch::Receiver<u64> {
        self.lock()
            .entry((topic_id, partition))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A commit moved the partition's end offset to `end`.
    pub fn committed(&self, topic_id: i64, partition: u32, end: u64) {
        let mut map = self.lock();
        if let Some(tx) = map.get(&(topic_id, partition)) {
            if tx.receiver_count() == 0 {
                let _ = map.remove(&(topic_id, partition));
            } else {
                let _ = tx.send_replace(end);
            }
        }
    }
}
