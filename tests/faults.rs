//! Fault injection: an object store that fails mid-load. Producers get 503 + Retry-After,
//! nothing is half-written, and the agent recovers by itself when the store returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floe_agent::store::FaultStore;
use floe_agent::{Agent, AgentConfig};
use floe_client::{Client, FetchOptions};
use floe_core::api::ProduceRecord;

fn rec(value: &str) -> ProduceRecord {
    ProduceRecord {
        value: Some(value.to_string()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_gives_503_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
        .unwrap()
        .with_fsync(true);
    let fault = FaultStore::new(Arc::new(fs));
    let switch = fault.switch();
    let index = floe_index::open(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, Arc::new(fault), index)
        .await
        .unwrap();
    let url = format!("http://{}", agent.addr);
    let c = Client::new(&url).unwrap();
    c.create_topic("f", 1).await.unwrap();
    assert_eq!(
        c.produce("f", vec![rec("before")]).await.unwrap().offsets[0].offset,
        0
    );

    switch.store(true, Ordering::SeqCst);
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/topics/f/records"))
        .header("content-type", "application/json")
        .body(r#"{"records":[{"value":"during"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(
        ready.status().as_u16(),
        503,
        "not ready while the bucket is down"
    );
    // The failed flush assigned no offsets.
    assert_eq!(
        c.describe_topic("f").await.unwrap().partitions[0].end_offset,
        1
    );

    switch.store(false, Ordering::SeqCst);
    let r = c.produce("f", vec![rec("after")]).await.unwrap();
    assert_eq!(
        r.offsets[0].offset, 1,
        "offsets stay dense across the outage"
    );
    let got = c.fetch("f", 0, 0, FetchOptions::default()).await.unwrap();
    let values: Vec<_> = got
        .records
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect();
    assert_eq!(values, vec!["before", "after"]);
    agent.shutdown().await;
}
