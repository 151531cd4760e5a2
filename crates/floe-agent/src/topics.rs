//! Topic metadata cache in front of the index. Positive entries only, with a short TTL so
//! topic changes made through other agents become visible.

use std::sync::Arc;
use std::time::Duration;

use floe_index::{Index, IndexError, TopicMeta};

#[derive(Clone)]
pub struct TopicCache {
    index: Arc<dyn Index>,
    cache: moka::future::Cache<String, Arc<TopicMeta>>,
}

impl std::fmt::Debug for TopicCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl TopicCache {
    pub fn new(index: Arc<dyn Index>, ttl: Duration) -> Self {
        Self {
            index,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Arc<TopicMeta>>, IndexError> {
        if let Some(t) = self.cache.get(name).await {
            return Ok(Some(t));
        }
        match self.index.get_topic(name).await? {
            Some(t) => {
                let t = Arc::new(t);
                self.cache.insert(name.to_string(), t.clone()).await;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }

    pub async fn invalidate(&self, name: &str) {
        self.cache.invalidate(name).await;
    }
}
