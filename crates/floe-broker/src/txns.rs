//! Transactions across requests and half-messages (RFC 0005 §1 and §3): begin, end,
//! list; the keeper that aborts transactions past their deadline and calls half-messages'
//! check-back URLs. All state is in the index, so any agent serves any step.

use std::collections::BTreeMap;
use std::time::Duration;

use floe_core::ipc::IncomingRecord;
use floe_core::txn::{Outcome, TxnState};
use floe_index::{BeginTxn, EndTxn, IndexError, TxnInfo};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Broker;
use crate::error::{BrokerError, BrokerResult};
use crate::groups::CommitRequest;
use crate::produce::ProducerStamp;
use crate::records::Produced;

/// A begun transaction: produce with this epoch (and `Producer-Transactional: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begun {
    pub producer_id: i64,
    pub epoch: u32,
    pub deadline_ms: i64,
}

/// Group offsets a transaction commits (consume-transform-produce): applied only if the
/// transaction commits, fenced by the group like any offset commit.
#[derive(Debug, Clone)]
pub struct TxnOffsets {
    pub topic: String,
    pub group: String,
    pub commit: CommitRequest,
}

/// What an end did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub state: TxnState,
    /// It had ended this way before: nothing changed now.
    pub repeated: bool,
}

/// A transaction with its topics named.
#[derive(Debug, Clone)]
pub struct TxnView {
    pub info: TxnInfo,
    /// (topic name, partition, first offset, records) per partition written, while open.
    pub partitions: Vec<(String, u32, u64, u64)>,
}

/// A prepared half-message (RFC 0005 §3).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub producer_id: i64,
    pub epoch: u32,
    pub produced: Produced,
}

/// The handle of a half-message: `<producer id>.<epoch>`.
pub fn half_handle(producer_id: i64, epoch: u32) -> String {
    format!("{producer_id}.{epoch}")
}

/// Parse a half-message handle.
pub fn parse_half_handle(s: &str) -> BrokerResult<(i64, u32)> {
    s.split_once('.')
        .and_then(|(p, e)| Some((p.parse::<i64>().ok()?, e.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            BrokerError::invalid(
                "invalid_handle",
                format!("a half-message handle is <producer_id>.<epoch>, got {s:?}"),
            )
        })
}

/// Expired transactions handled per keeper pass (the rest wait for the next pass).
const DUE_PER_PASS: u32 = 1000;

/// The longest check-back URL accepted.
const MAX_CHECK_URL: usize = 2048;

impl Broker {
    /// Begin a transaction of the producer session `(producer_id, epoch)` (RFC 0005):
    /// the transaction is the session's next epoch, aborted by the engine after
    /// `timeout_ms` (default and maximum from the agent's config).
    pub async fn begin_transaction(
        &self,
        producer_id: i64,
        epoch: u32,
        timeout_ms: Option<u64>,
    ) -> BrokerResult<Begun> {
        let timeout = self.txn_timeout(timeout_ms)?;
        self.begin(producer_id, epoch, timeout, None).await
    }

    fn txn_timeout(&self, timeout_ms: Option<u64>) -> BrokerResult<Duration> {
        let c = &self.config.transactions;
        match timeout_ms {
            None => Ok(c.default_timeout),
            Some(0) => Err(BrokerError::invalid(
                "invalid_timeout",
                "timeout_ms must be at least 1",
            )),
            Some(ms) if ms > self.config.limits.max_transaction_timeout_ms => {
                Err(BrokerError::invalid(
                    "invalid_timeout",
                    format!(
                        "timeout_ms {ms} is above the agent's maximum of {} ms",
                        self.config.limits.max_transaction_timeout_ms
                    ),
                ))
            }
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    async fn begin(
        &self,
        producer_id: i64,
        epoch: u32,
        timeout: Duration,
        check_url: Option<String>,
    ) -> BrokerResult<Begun> {
        let now = self.clock.now_ms();
        let deadline_ms =
            now.saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        let epoch = self
            .index
            .begin_txn(BeginTxn {
                producer_id,
                epoch,
                now_ms: now,
                deadline_ms,
                check_url,
            })
            .await
            .map_err(|e| BrokerError::index(&e))?;
        Ok(Begun {
            producer_id,
            epoch,
            deadline_ms,
        })
    }

    /// Commit or abort the transaction `(producer_id, epoch)`. A commit applies `offsets`
    /// (validated like any group commit, fenced in the same index transaction).
    pub async fn end_transaction(
        &self,
        producer_id: i64,
        epoch: u32,
        outcome: Outcome,
        offsets: Vec<TxnOffsets>,
    ) -> BrokerResult<Ended> {
        if outcome == Outcome::Abort && !offsets.is_empty() {
            return Err(BrokerError::invalid(
                "invalid_request",
                "offsets are committed with a commit, not an abort",
            ));
        }
        let mut commits = Vec::with_capacity(offsets.len());
        for o in offsets {
            commits.push(self.offset_commit(&o.topic, &o.group, o.commit).await?);
        }
        self.end(producer_id, epoch, outcome, commits, "producer")
            .await
    }

    async fn end(
        &self,
        producer_id: i64,
        epoch: u32,
        outcome: Outcome,
        offsets: Vec<floe_index::OffsetCommit>,
        by: &'static str,
    ) -> BrokerResult<Ended> {
        let ended = self
            .index
            .end_txn(EndTxn {
                producer_id,
                epoch,
                outcome,
                offsets,
                now_ms: self.clock.now_ms(),
            })
            .await
            .map_err(|e| match e {
                IndexError::Txn(floe_index::TxnError::Offsets(g)) => {
                    let inner = crate::groups::group_err(g);
                    BrokerError::conflict(
                        "transaction_offsets_fenced",
                        format!(
                            "the transaction's offset commit is refused ({}: {}); the transaction is still open — abort it",
                            inner.code, inner.message
                        ),
                    )
                }
                other => BrokerError::index(&other),
            })?;
        // Wake this agent's readers (others are woken through the index).
        for &(t, p, end) in &ended.partitions {
            self.notifier.committed(t, p, end);
        }
        if !ended.repeated {
            let state = outcome.state();
            self.metrics
                .transactions_ended
                .with_label_values(&[state.as_str(), by])
                .inc();
            info!(
                producer_id,
                epoch,
                state = state.as_str(),
                by,
                "transaction ended"
            );
        }
        Ok(Ended {
            state: outcome.state(),
            repeated: ended.repeated,
        })
    }

    /// Transactions, oldest first (open only, or also the ended ones still remembered),
    /// with topic names.
    pub async fn transactions(&self, open_only: bool) -> BrokerResult<Vec<TxnView>> {
        let txns = self
            .index
            .transactions(open_only)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        let names: BTreeMap<i64, String> = if txns.iter().any(|t| !t.partitions.is_empty()) {
            self.list_topics()
                .await?
                .into_iter()
                .map(|t| (t.id, t.name))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(txns
            .into_iter()
            .map(|info| TxnView {
                partitions: info
                    .partitions
                    .iter()
                    .map(|&(t, p, first, n)| {
                        let name = names.get(&t).cloned().unwrap_or_else(|| format!("#{t}"));
                        (name, p, first, n)
                    })
                    .collect(),
                info,
            })
            .collect())
    }

    /// Prepare a half-message (RFC 0005 §3): `incoming` is written to `topic` invisible to
    /// consumers until `commit`; if neither commit nor rollback comes, `check_url` is
    /// asked (first after `half_first_check`).
    pub async fn prepare_half(
        &self,
        topic: &str,
        mut incoming: Vec<IncomingRecord>,
        check_url: &str,
    ) -> BrokerResult<Prepared> {
        let url = check_url.trim();
        if url.len() > MAX_CHECK_URL
            || !(url.starts_with("http://") || url.starts_with("https://"))
            || reqwest::Url::parse(url).is_err()
        {
            return Err(BrokerError::invalid(
                "invalid_check_url",
                format!(
                    "check_url must be an http(s) URL of at most {MAX_CHECK_URL} bytes, got {url:?}"
                ),
            ));
        }
        let t = self.existing_topic(topic).await?;
        if incoming.is_empty() {
            return Err(BrokerError::invalid(
                "invalid_request",
                "a half-message needs at least one record",
            ));
        }
        // Sequences are per partition: place keyless records now (one partition for all).
        let spread = u64::from(t.partitions.max(1));
        let keyless = (self.clock.now_ms().unsigned_abs() % spread) as i64;
        let mut partitions = std::collections::BTreeSet::new();
        for r in &mut incoming {
            let p = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(k)) => {
                    i64::from(floe_core::partitioner::partition_for_key(k, t.partitions))
                }
                (None, None) => keyless,
            };
            r.partition = Some(p);
            let _ = partitions.insert(u32::try_from(p).unwrap_or(u32::MAX));
        }
        let session = self.init_producer(None).await?;
        let first = self.config.transactions.half_first_check;
        let begun = self
            .begin(
                session.producer_id,
                session.epoch,
                first,
                Some(url.to_string()),
            )
            .await?;
        let stamp = ProducerStamp {
            producer_id: begun.producer_id,
            epoch: begun.epoch,
            sequences: partitions.into_iter().map(|p| (p, 0)).collect(),
            transactional: true,
        };
        let deadline = self.produce_deadline();
        match self
            .produce(topic, incoming, deadline, None, Some(&stamp))
            .await
        {
            Ok(produced) => Ok(Prepared {
                producer_id: begun.producer_id,
                epoch: begun.epoch,
                produced,
            }),
            Err(e) => {
                // Nothing of it is visible; end it now rather than at its first check.
                let _ = self
                    .end(
                        begun.producer_id,
                        begun.epoch,
                        Outcome::Abort,
                        Vec::new(),
                        "producer",
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// One pass of the keeper: abort transactions past their deadline; ask half-messages'
    /// producers (one agent per check, claimed in the index). Returns how many ended.
    pub async fn check_transactions(&self) -> BrokerResult<usize> {
        let now = self.clock.now_ms();
        let (open, due) = self
            .index
            .due_transactions(now, DUE_PER_PASS)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        self.metrics
            .transactions_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        let mut ended = 0;
        for t in due {
            let r = match &t.check_url {
                None => self
                    .end(
                        t.producer_id,
                        t.epoch,
                        Outcome::Abort,
                        Vec::new(),
                        "timeout",
                    )
                    .await
                    .map(Some),
                Some(url) => self.check_back(&t, url).await,
            };
            match r {
                Ok(Some(e)) if !e.repeated => ended += 1,
                Ok(_) => {}
                // Another agent or the producer got there first.
                Err(e) if e.code.starts_with("transaction_") => {
                    debug!(code = e.code, "transaction already ended");
                }
                Err(e) => {
                    warn!(producer_id = t.producer_id, epoch = t.epoch, error = %e, "ending an expired transaction failed")
                }
            }
        }
        Ok(ended)
    }

    /// A half-message past its deadline: claim the check (one agent), ask the producer,
    /// act on its answer; after `half_max_checks` unanswered checks apply the default.
    async fn check_back(&self, t: &TxnInfo, url: &str) -> BrokerResult<Option<Ended>> {
        let c = &self.config.transactions;
        let now = self.clock.now_ms();
        if t.checks >= c.half_max_checks {
            let outcome = if c.half_default_commit {
                Outcome::Commit
            } else {
                Outcome::Abort
            };
            let e = self
                .end(t.producer_id, t.epoch, outcome, Vec::new(), "default")
                .await?;
            if !e.repeated {
                warn!(
                    handle = %half_handle(t.producer_id, t.epoch),
                    checks = t.checks,
                    outcome = e.state.as_str(),
                    "half-message unanswered after its check-backs; the default applied"
                );
                self.audit_half(t, e.state).await;
            }
            return Ok(Some(e));
        }
        let next = now
            .saturating_add(i64::try_from(c.half_check_interval.as_millis()).unwrap_or(i64::MAX));
        if !self
            .index
            .claim_check(t.producer_id, t.epoch, t.checks, next)
            .await
            .map_err(|e| BrokerError::index(&e))?
        {
            return Ok(None); // another agent checks it
        }
        let handle = half_handle(t.producer_id, t.epoch);
        let body = serde_json::json!({
            "handle": handle,
            "producer_id": t.producer_id,
            "epoch": t.epoch,
            "check": t.checks + 1,
        });
        let answer = async {
            let resp = self
                .http
                .post(url)
                .timeout(c.half_check_timeout)
                .json(&body)
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let v: serde_json::Value = resp.json().await.ok()?;
            v.get("outcome")?.as_str().map(str::to_string)
        }
        .instrument(info_span!("half_check", %handle, check = t.checks + 1))
        .await;
        let outcome = match answer.as_deref() {
            Some("commit") => Some(Outcome::Commit),
            Some("rollback") => Some(Outcome::Abort),
            _ => None,
        };
        let label = match (&answer, outcome) {
            (_, Some(Outcome::Commit)) => "commit",
            (_, Some(Outcome::Abort)) => "rollback",
            (Some(_), None) => "unknown",
            (None, None) => "failed",
        };
        self.metrics.half_checks.with_label_values(&[label]).inc();
        match outcome {
            Some(o) => self
                .end(t.producer_id, t.epoch, o, Vec::new(), "check_back")
                .await
                .map(Some),
            None => {
                debug!(%handle, label, "check-back gave no outcome; asking again later");
                Ok(None)
            }
        }
    }

    /// Record a half-message the default ended in the audit topic (created on first use).
    async fn audit_half(&self, t: &TxnInfo, state: TxnState) {
        let topic = self.config.transactions.half_audit_topic.clone();
        if self.existing_topic(&topic).await.is_err() {
            let _ = self
                .create_topic(crate::topics::TopicSpec {
                    name: topic.clone(),
                    partitions: 1,
                    ..Default::default()
                })
                .await;
        }
        let value = serde_json::json!({
            "handle": half_handle(t.producer_id, t.epoch),
            "outcome": state.as_str(),
            "checks": t.checks,
            "check_url": t.check_url,
            "started_ms": t.started_ms,
            "reason": "no commit or rollback, and no answer from the check-back URL",
        });
        let rec = IncomingRecord {
            key: Some(half_handle(t.producer_id, t.epoch).into_bytes().into()),
            value: value.to_string().into_bytes().into(),
            headers: Vec::new(),
            partition: None,
        };
        if let Err(e) = self
            .produce(&topic, vec![rec], self.produce_deadline(), None, None)
            .await
        {
            warn!(error = %e, "writing the half-message audit record failed");
        }
    }
}

/// The keeper: every `check_interval`, [`Broker::check_transactions`] until shutdown.
pub async fn keep(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = broker.config.transactions.check_interval;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let pass = broker
            .check_transactions()
            .instrument(info_span!("transaction_keeper"));
        match pass.await {
            Ok(0) => {}
            Ok(n) => debug!(ended = n, "expired transactions ended"),
            Err(e) => warn!(error = %e, "transaction check failed"),
        }
    }
}
