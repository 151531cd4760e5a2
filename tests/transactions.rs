//! Transactions across requests (RFC 0005 §1) against a real `floe serve` process on the
//! embedded default (local folder + SQLite). The same scenarios run across three agents
//! on S3 + PostgreSQL in `s3_multi_agent.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{AgentProc, txn};

fn agent(dir: &std::path::Path) -> AgentProc {
    AgentProc::start(dir, &["--linger-ms", "5", "--poll-interval-ms", "200"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_atomic_and_aborts_reach_no_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    txn::transactions_are_atomic_and_aborts_reach_no_consumer(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_end_cannot_end_the_next_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    txn::a_delayed_end_cannot_end_the_next_transaction(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_survives_killed_members() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    txn::consume_transform_produce_survives_killed_members(&[a.client()], 4).await;
}

/// An agent killed (SIGKILL) between prepare and end loses nothing: after a restart a
/// half-message can still be committed, one whose producer never answers is decided by
/// its check-back, and an open transaction is aborted at its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_prepare_and_end_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--linger-ms",
        "5",
        "--transaction-check-interval-ms",
        "100",
        "--half-first-check-ms",
        "1500",
    ];
    let a = AgentProc::start(dir.path(), &flags);
    let c = a.client();
    let _ = c.create_topic("k", 1).await.unwrap();
    let commit = common::CheckServer::start(vec![Some("commit")]).await;
    let silent = common::CheckServer::start(vec![Some("unknown")]).await;
    let m1 = c
        .prepare_half("k", vec![common::rec("by-check".into())], &commit.url)
        .await
        .unwrap();
    let m2 = c
        .prepare_half("k", vec![common::rec("by-producer".into())], &silent.url)
        .await
        .unwrap();
    let s = c.init_producer(Some("killed")).await.unwrap();
    let t = c
        .begin_transaction(s.producer_id, s.epoch, Some(2_000))
        .await
        .unwrap();
    let session = floe_api::ProducerSessionInfo {
        producer_id: t.producer_id,
        epoch: t.epoch,
    };
    let _ = c
        .produce_session(
            "k",
            vec![floe_api::ProduceRecord {
                partition: Some(0),
                ..common::rec("never".into())
            }],
            session,
            &std::collections::BTreeMap::from([(0, 0)]),
            true,
        )
        .await
        .unwrap();
    a.kill9();
    let a = AgentProc::start(dir.path(), &flags);
    let c = a.client();
    let _ = c.end_half(&m2.handle, true).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got = Vec::new();
    while std::time::Instant::now() < deadline {
        let f = c
            .fetch("k", 0, 0, floe_client::FetchOptions::default())
            .await
            .unwrap();
        got = f.records.iter().filter_map(|r| r.value.clone()).collect();
        if got.len() == 2 && f.stable_offset == f.end_offset {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got, ["by-check", "by-producer"]);
    assert_eq!(commit.calls().len(), 1, "checked once, after the restart");
    assert_eq!(commit.calls()[0]["handle"], m1.handle.as_str());
    assert_eq!(
        c.commit_transaction(t.producer_id, t.epoch, Vec::new())
            .await
            .unwrap_err()
            .code(),
        Some("transaction_aborted")
    );
    assert!(c.transactions(false).await.unwrap().transactions.is_empty());
}
