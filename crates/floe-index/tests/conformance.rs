//! The `Index` contract, one suite for every backend (in the manner of object_store's
//! integration suite). Each clause is a function taking a fresh index; the modules at the
//! bottom run all of them against SQLite (a temp file) and PostgreSQL (a fresh database
//! on the test server, `FLOE_TEST_PG_URL`, default postgres://postgres@127.0.0.1:5432/postgres;
//! `tests/run-all.sh` starts it), plus a property test against an in-memory model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use floe_core::group::{GroupError, GroupState, Member};
use floe_core::producer::{Refusal, RequestCheck};
use floe_core::txn::{Outcome, TxnState};
use floe_index::{
    BeginTxn, EndTxn, IdempotencyBegin, IdempotencyCompletion, IdempotencyVerdict, Index,
    IndexError, NewTopic, OffsetCommit, ProducerAppend, ProducerBatch, ReplaceRuns, RunCommit,
    RunEntry, RunOutcome, SegmentCommit, StateKey, StateKind, StateWrite, TxnError,
};

type Idx = Arc<dyn Index>;

/// Whether `key` is referenced, asked one key at a time and in a batch (with a key that
/// is never referenced around it): both answers must agree.
async fn referenced(i: &Idx, key: &str) -> bool {
    let one = i.segment_referenced(key).await.unwrap();
    let batch = i
        .segments_referenced(&["never-written".to_string(), key.to_string()])
        .await
        .unwrap();
    assert_eq!(
        batch,
        vec![false, one],
        "segments_referenced vs segment_referenced for {key}"
    );
    one
}

/// `runs_from`, also asked through `read_from` (offsets and entries in one call): the
/// entries must be the same and the offsets those of `log_ends`.
async fn runs_from(
    i: &Idx,
    t: i64,
    p: u32,
    offset: u64,
    limit: u32,
) -> floe_index::Result<Vec<RunEntry>> {
    let runs = i.runs_from(t, p, offset, limit).await?;
    let ends = i.log_ends(t, p).await?;
    let view = i.read_from(t, p, offset, limit).await?;
    assert_eq!(
        view,
        ends.map(|e| (e, runs.clone())),
        "read_from vs log_ends + runs_from at {t}/{p}@{offset}"
    );
    Ok(runs)
}

fn run(topic_id: i64, partition: u32, records: u32) -> RunCommit {
    RunCommit {
        topic_id,
        partition,
        records,
        row_group_first: 0,
        row_group_count: 1,
        byte_start: 4,
        byte_end: 100,
        min_timestamp_ms: 0,
        max_timestamp_ms: 0,
    }
}

fn seg(key: &str, runs: Vec<RunCommit>) -> SegmentCommit {
    SegmentCommit {
        key: key.into(),
        size: 100,
        runs,
        deadline_unix_ms: i64::MAX,
        created_ms: 0,
        state_writes: Vec::new(),
        idempotency: Vec::new(),
        producers: Vec::new(),
    }
}

fn new_topic(name: &str, partitions: u32) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions,
        retention_ms: Some(60_000),
        config: BTreeMap::from([
            ("a=b".into(), "x\ny".into()),
            ("back\\slash".into(), "=\\e\\n".into()),
            ("queue.ordering".into(), "key".into()),
        ]),
        created_ms: 1,
        max_topics: 1000,
    }
}

async fn topics_roundtrip(i: Idx) {
    let a = i.create_topic(new_topic("a", 2)).await.unwrap();
    assert!(matches!(
        i.create_topic(new_topic("a", 1)).await,
        Err(IndexError::TopicExists(n)) if n == "a"
    ));
    let got = i.get_topic("a").await.unwrap().unwrap();
    assert_eq!(
        got, a,
        "config, retention and partitions survive the round trip"
    );
    assert_eq!(i.get_topic("zz").await.unwrap(), None);
    let _ = i.create_topic(new_topic("b", 1)).await.unwrap();
    let names: Vec<String> = i
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["a", "b"], "listed by name");
    let offs = i.partition_offsets(a.id).await.unwrap();
    assert_eq!(offs.len(), 2);
    assert!(
        offs.iter()
            .all(|o| o.start_offset == 0 && o.end_offset == 0)
    );
    assert_eq!(i.end_offset(a.id, 1).await.unwrap(), Some(0));
    assert_eq!(
        i.end_offset(a.id, 2).await.unwrap(),
        None,
        "no such partition"
    );
    let mut limited = new_topic("c", 1);
    limited.max_topics = 2;
    assert!(matches!(
        i.create_topic(limited).await,
        Err(IndexError::TooManyTopics(2))
    ));
    assert!(i.delete_topic("b").await.unwrap());
    assert!(!i.delete_topic("b").await.unwrap());
    i.ping().await.unwrap();
}

async fn commit_assigns_dense_offsets(i: Idx) {
    let a = i.create_topic(new_topic("a", 2)).await.unwrap();
    let b = i.create_topic(new_topic("b", 1)).await.unwrap();
    let out = i
        .commit(seg(
            "s1",
            vec![
                run(a.id, 0, 3),
                run(b.id, 0, 2),
                run(a.id, 1, 1),
                run(a.id, 0, 4),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            RunOutcome::Committed { base_offset: 0 },
            RunOutcome::Committed { base_offset: 0 },
            RunOutcome::Committed { base_offset: 0 },
            RunOutcome::Committed { base_offset: 3 },
        ],
        "two runs of one partition in one segment follow each other"
    );
    let out = i
        .commit(seg("s2", vec![run(a.id, 0, 5), run(999_999, 0, 1)]))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            RunOutcome::Committed { base_offset: 7 },
            RunOutcome::TopicGone
        ]
    );
    assert_eq!(i.end_offset(a.id, 0).await.unwrap(), Some(12));
    let runs = runs_from(&i, a.id, 0, 8, 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        vec![7],
        "the run covering offset 8 and after"
    );
    assert_eq!(runs[0].segment_key, "s2");
    assert_eq!(runs_from(&i, a.id, 0, 0, 10).await.unwrap().len(), 3);
    assert_eq!(
        runs_from(&i, a.id, 0, 0, 1).await.unwrap().len(),
        1,
        "limit"
    );
    assert_eq!(
        i.read_from(a.id, 2, 0, 10).await.unwrap(),
        None,
        "no such partition"
    );
    for past_end in [13, u64::MAX] {
        assert_eq!(
            i.read_from(a.id, 0, past_end, 10).await.unwrap(),
            Some(((12, 12), vec![])),
            "past the end: no runs"
        );
    }
    let c = i.create_topic(new_topic("c", 1)).await.unwrap();
    assert_eq!(
        i.read_from(c.id, 0, 0, 10).await.unwrap(),
        Some(((0, 0), vec![])),
        "an empty partition"
    );
    assert!(referenced(&i, "s1").await);
    assert!(!referenced(&i, "nope").await);
}

async fn commit_past_its_deadline_lands_nothing(i: Idx) {
    let a = i.create_topic(new_topic("a", 1)).await.unwrap();
    let _ = i.commit(seg("ok", vec![run(a.id, 0, 2)])).await.unwrap();
    let mut late = seg("late", vec![run(a.id, 0, 5)]);
    late.deadline_unix_ms = 1; // 1970
    let err = i.commit(late).await.unwrap_err();
    assert!(
        matches!(err, IndexError::DeadlineExceeded { late_ms } if late_ms > 0),
        "{err:?}"
    );
    assert_eq!(i.end_offset(a.id, 0).await.unwrap(), Some(2), "no offsets");
    assert!(
        !referenced(&i, "late").await,
        "no run refers to the late segment"
    );
    let out = i.commit(seg("next", vec![run(a.id, 0, 1)])).await.unwrap();
    assert_eq!(
        out,
        vec![RunOutcome::Committed { base_offset: 2 }],
        "offsets stay dense after a refused commit"
    );
}

async fn concurrent_commits_stay_dense(i: Idx) {
    let a = i.create_topic(new_topic("a", 2)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..6u32 {
        let i = i.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..15u32 {
                let records = 1 + (w + n) % 4;
                let out = i
                    .commit(seg(
                        &format!("w{w}-{n}"),
                        vec![run(a.id, 0, records), run(a.id, 1, 1)],
                    ))
                    .await
                    .unwrap();
                let RunOutcome::Committed { base_offset } = out[0] else {
                    panic!("{out:?}")
                };
                got.push((base_offset, records));
            }
            got
        }));
    }
    let mut spans = Vec::new();
    for t in tasks {
        spans.extend(t.await.unwrap());
    }
    spans.sort_unstable();
    let mut next = 0;
    for (base, n) in &spans {
        assert_eq!(*base, next, "runs are dense and never overlap: {spans:?}");
        next += u64::from(*n);
    }
    assert_eq!(i.end_offset(a.id, 0).await.unwrap(), Some(next));
    assert_eq!(i.end_offset(a.id, 1).await.unwrap(), Some(90));
    let runs = runs_from(&i, a.id, 0, 0, 1000).await.unwrap();
    assert_eq!(runs.len(), 90);
}

async fn delete_and_recreate_is_a_new_incarnation(i: Idx) {
    let old = i.create_topic(new_topic("t", 1)).await.unwrap();
    let _ = i.commit(seg("s1", vec![run(old.id, 0, 4)])).await.unwrap();
    let key = StateKey {
        kind: StateKind::Group,
        topic_id: old.id,
        group: "g".into(),
        partition: 0,
    };
    assert!(i.store_state(&key, None, b"x".to_vec()).await.unwrap());
    assert!(i.delete_topic("t").await.unwrap());
    let new = i.create_topic(new_topic("t", 1)).await.unwrap();
    assert_ne!(new.id, old.id, "a re-created topic gets a new id");
    assert_eq!(i.end_offset(new.id, 0).await.unwrap(), Some(0));
    assert_eq!(
        i.commit(seg("s2", vec![run(old.id, 0, 1)])).await.unwrap(),
        vec![RunOutcome::TopicGone],
        "a commit for the old incarnation never lands in the new one"
    );
    assert_eq!(i.end_offset(new.id, 0).await.unwrap(), Some(0));
    assert!(!referenced(&i, "s1").await, "runs deleted");
    assert_eq!(i.load_state(&key).await.unwrap(), None, "state deleted");
    assert!(
        !i.store_state(&key, None, b"y".to_vec()).await.unwrap(),
        "no state for a deleted incarnation"
    );
}

async fn state_is_compare_and_swap(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    let key = StateKey {
        kind: StateKind::Share,
        topic_id: t.id,
        group: "g".into(),
        partition: 1,
    };
    assert_eq!(i.load_state(&key).await.unwrap(), None);
    assert!(i.store_state(&key, None, b"a".to_vec()).await.unwrap());
    assert!(
        !i.store_state(&key, None, b"b".to_vec()).await.unwrap(),
        "insert races lose"
    );
    let v = i.load_state(&key).await.unwrap().unwrap();
    assert_eq!(v.data, b"a");
    assert!(
        i.store_state(&key, Some(v.version), b"c".to_vec())
            .await
            .unwrap()
    );
    assert!(
        !i.store_state(&key, Some(v.version), b"d".to_vec())
            .await
            .unwrap(),
        "a stale version loses"
    );
    let v2 = i.load_state(&key).await.unwrap().unwrap();
    assert_eq!(v2.data, b"c");
    assert!(v2.version > v.version, "versions grow");
    let other_kind = StateKey {
        kind: StateKind::Group,
        partition: 0,
        ..key.clone()
    };
    assert!(
        i.store_state(&other_kind, None, b"g".to_vec())
            .await
            .unwrap()
    );
    let listed = i.list_states(StateKind::Share, Some(t.id)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key);
    assert_eq!(
        i.list_states(StateKind::Group, None).await.unwrap().len(),
        1
    );
    // Agent rows (RFC 0006) belong to no topic: topic 0 takes a first write, which no
    // other kind does.
    let agent = StateKey {
        kind: StateKind::Agent,
        topic_id: 0,
        group: "a1".into(),
        partition: 0,
    };
    assert!(
        !i.store_state(
            &StateKey {
                kind: StateKind::Share,
                ..agent.clone()
            },
            None,
            b"x".to_vec()
        )
        .await
        .unwrap(),
        "a share state needs its topic"
    );
    assert!(i.store_state(&agent, None, b"u1".to_vec()).await.unwrap());
    let v = i.load_state(&agent).await.unwrap().unwrap();
    assert!(
        i.store_state(&agent, Some(v.version), b"u2".to_vec())
            .await
            .unwrap()
    );
    let agents = i.list_states(StateKind::Agent, None).await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (&agents[0].0, agents[0].1.data.as_slice()),
        (&agent, &b"u2"[..])
    );
}

/// The unit of work: runs and consumer-state writes commit together or not at all.
async fn state_writes_commit_with_runs_or_not_at_all(i: Idx) {
    let t = i.create_topic(new_topic("t", 1)).await.unwrap();
    let dlq = i.create_topic(new_topic("t.dlq", 1)).await.unwrap();
    let key = StateKey {
        kind: StateKind::Share,
        topic_id: t.id,
        group: "q".into(),
        partition: 0,
    };
    assert!(
        i.store_state(&key, None, b"pending".to_vec())
            .await
            .unwrap()
    );
    let v1 = i.load_state(&key).await.unwrap().unwrap().version;
    let write = |expected, data: &[u8]| StateWrite {
        key: key.clone(),
        expected,
        data: data.to_vec(),
    };

    let mut ok = seg("s1", vec![run(dlq.id, 0, 2)]);
    ok.state_writes = vec![write(Some(v1), b"done")];
    assert_eq!(
        i.commit(ok).await.unwrap(),
        vec![RunOutcome::Committed { base_offset: 0 }]
    );
    let after = i.load_state(&key).await.unwrap().unwrap();
    assert_eq!(after.data, b"done");
    assert!(after.version > v1);

    // A second writer that read the old version: neither its runs nor its state land.
    let mut stale = seg("s2", vec![run(dlq.id, 0, 2)]);
    stale.state_writes = vec![write(Some(v1), b"done again")];
    let err = i.commit(stale).await.unwrap_err();
    assert!(
        matches!(&err, IndexError::StateConflict(k) if *k == key),
        "{err:?}"
    );
    assert_eq!(i.end_offset(dlq.id, 0).await.unwrap(), Some(2), "no runs");
    assert!(!referenced(&i, "s2").await);
    assert_eq!(
        i.load_state(&key).await.unwrap().unwrap(),
        after,
        "no state"
    );

    // An insert (expected None) where a blob exists conflicts too; one for a new key lands.
    let mut insert = seg("s3", vec![run(dlq.id, 0, 1)]);
    insert.state_writes = vec![write(None, b"x")];
    assert!(matches!(
        i.commit(insert).await,
        Err(IndexError::StateConflict(_))
    ));
    let other = StateKey {
        partition: 7,
        ..key.clone()
    };
    let mut insert = seg("s4", vec![run(dlq.id, 0, 1)]);
    insert.state_writes = vec![StateWrite {
        key: other.clone(),
        expected: None,
        data: b"new".to_vec(),
    }];
    assert_eq!(
        i.commit(insert).await.unwrap(),
        vec![RunOutcome::Committed { base_offset: 2 }]
    );
    assert_eq!(i.load_state(&other).await.unwrap().unwrap().data, b"new");
}

/// Many writers increment one counter by load + compare-and-swap: no update is lost.
async fn concurrent_cas_loses_no_update(i: Idx) {
    let t = i.create_topic(new_topic("t", 1)).await.unwrap();
    let key = StateKey {
        kind: StateKind::Group,
        topic_id: t.id,
        group: "counter".into(),
        partition: 0,
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let i = i.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let cur = i.load_state(&key).await.unwrap();
                    let (n, version) = match &cur {
                        Some(v) => (
                            String::from_utf8(v.data.clone())
                                .unwrap()
                                .parse::<u32>()
                                .unwrap(),
                            Some(v.version),
                        ),
                        None => (0, None),
                    };
                    let data = (n + 1).to_string().into_bytes();
                    if i.store_state(&key, version, data).await.unwrap() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(i.load_state(&key).await.unwrap().unwrap().data, b"40");
}

/// The model the property test checks the index against: per topic name, its current
/// incarnation (id, end offsets) and the ids of deleted incarnations.
#[derive(Debug, Clone)]
enum Op {
    Create(u8, u32),
    Delete(u8),
    Commit(Vec<(u8, u32, u32, bool)>),
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (0u8..3, 1u32..4).prop_map(|(n, p)| Op::Create(n, p)),
        1 => (0u8..3).prop_map(Op::Delete),
        4 => proptest::collection::vec((0u8..3, 0u32..4, 1u32..20, any::<bool>()), 1..5)
            .prop_map(Op::Commit),
    ]
}

async fn matches_model(i: Idx, prefix: String, ops: Vec<Op>) {
    // name -> (id, ends); gone: ids of deleted incarnations
    let mut live: BTreeMap<u8, (i64, Vec<u64>)> = BTreeMap::new();
    let mut gone: BTreeMap<u8, i64> = BTreeMap::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Create(t, p) => {
                let r = i.create_topic(new_topic(&format!("{prefix}{t}"), p)).await;
                match (live.contains_key(&t), r) {
                    (true, Err(IndexError::TopicExists(_))) => {}
                    (false, Ok(m)) => {
                        let _ = live.insert(t, (m.id, vec![0; p as usize]));
                    }
                    (exists, r) => panic!("create {t} (exists: {exists}): {r:?}"),
                }
            }
            Op::Delete(t) => {
                let deleted = i.delete_topic(&format!("{prefix}{t}")).await.unwrap();
                assert_eq!(deleted, live.contains_key(&t));
                if let Some((id, _)) = live.remove(&t) {
                    let _ = gone.insert(t, id);
                }
            }
            Op::Commit(runs) => {
                // `old`: aim at the deleted incarnation when there is one.
                let mut commit = Vec::new();
                let mut expect = Vec::new();
                let mut ends = live.clone();
                for (t, p, records, old) in runs {
                    let target = match (old, gone.get(&t), ends.get_mut(&t)) {
                        (true, Some(id), _) | (_, Some(id), None) => Some((*id, None)),
                        (_, _, Some((id, e))) => Some((*id, Some(e))),
                        (_, None, None) => None,
                    };
                    let Some((id, e)) = target else { continue };
                    commit.push(run(id, p, records));
                    expect.push(match e {
                        Some(e) if (p as usize) < e.len() => {
                            let base = e[p as usize];
                            e[p as usize] += u64::from(records);
                            RunOutcome::Committed { base_offset: base }
                        }
                        _ => RunOutcome::TopicGone,
                    });
                }
                if commit.is_empty() {
                    continue;
                }
                let out = i
                    .commit(seg(&format!("{prefix}s{n}"), commit))
                    .await
                    .unwrap();
                assert_eq!(out, expect);
                live = ends;
            }
        }
        for (id, ends) in live.values() {
            let offs = i.partition_offsets(*id).await.unwrap();
            let got: Vec<u64> = offs.iter().map(|o| o.end_offset).collect();
            assert_eq!(&got, ends, "end offsets of topic {id}");
            // Every partition's entries tile its log from 0 to its end, and a lookup from
            // any entry's first or last offset starts at that entry, whichever table
            // (SQLite: `runs` and the two recent tables, mid-copy or not) holds it.
            for (p, end) in ends.iter().enumerate() {
                let p = p as u32;
                let all = runs_from(&i, *id, p, 0, 10_000).await.unwrap();
                let mut next = 0;
                for e in &all {
                    assert_eq!(e.base_offset, next, "topic {id} partition {p}: {all:?}");
                    next += u64::from(e.records);
                }
                assert_eq!(
                    next, *end,
                    "topic {id} partition {p} ends at its end offset"
                );
                for e in &all {
                    for o in [
                        e.base_offset,
                        e.base_offset + u64::from(e.records.max(1)) - 1,
                    ] {
                        let got = runs_from(&i, *id, p, o, 2).await.unwrap();
                        assert_eq!(got.first(), Some(e), "topic {id} partition {p} from {o}");
                        assert!(got.len() <= 2);
                    }
                }
            }
        }
    }
}

fn group_key(topic_id: i64, group: &str) -> StateKey {
    StateKey {
        kind: StateKind::Group,
        topic_id,
        group: group.into(),
        partition: 0,
    }
}

/// A group whose members joined at `now` with a 1 s session, over `partitions`.
fn group_of(members: &[&str], now: i64, partitions: u32) -> GroupState {
    let mut g = GroupState::default();
    for m in members {
        let member = Member {
            partitions: Vec::new(),
            last_seen_ms: now,
            session_timeout_ms: 1000,
            auto_commit: false,
        };
        g.join(m, now, member, partitions, 100).unwrap();
    }
    g
}

fn offset_commit(
    topic_id: i64,
    g: &GroupState,
    member: &str,
    offsets: Vec<(u32, u64)>,
    now: i64,
) -> OffsetCommit {
    OffsetCommit {
        group: group_key(topic_id, "g"),
        member: member.into(),
        generation: g.generation,
        offsets,
        now_ms: now,
        partitions: 2,
    }
}

/// Committed offsets are rows, written only when the group's stored state lets the member
/// of that generation commit those partitions (checked in the same transaction).
async fn offset_commits_are_fenced_by_the_group_state(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    let g = group_of(&["a"], 1000, 2);
    let fenced = |r: floe_index::Result<()>| match r {
        Err(IndexError::Fenced(e)) => e,
        other => panic!("expected a fenced commit, got {other:?}"),
    };
    // No group state yet: nobody is a member.
    assert!(matches!(
        fenced(
            i.commit_offsets(offset_commit(t.id, &g, "a", vec![(0, 5)], 1000))
                .await
        ),
        GroupError::UnknownMember(_)
    ));
    let key = group_key(t.id, "g");
    assert!(
        i.store_state(&key, None, floe_core::stored::encode(&g).unwrap())
            .await
            .unwrap()
    );
    i.commit_offsets(offset_commit(t.id, &g, "a", vec![(0, 5), (1, 7)], 1100))
        .await
        .unwrap();
    assert_eq!(
        i.group_offsets(t.id, "g").await.unwrap(),
        BTreeMap::from([(0, 5), (1, 7)])
    );
    let mut stale = offset_commit(t.id, &g, "a", vec![(0, 9)], 1100);
    stale.generation -= 1;
    assert!(matches!(
        fenced(i.commit_offsets(stale).await),
        GroupError::StaleGeneration { .. }
    ));
    assert!(matches!(
        fenced(
            i.commit_offsets(offset_commit(t.id, &g, "b", vec![(0, 9)], 1100))
                .await
        ),
        GroupError::UnknownMember(_)
    ));
    // Past its 1 s session the member is expired by the fence itself.
    assert!(matches!(
        fenced(
            i.commit_offsets(offset_commit(t.id, &g, "a", vec![(0, 9)], 2500))
                .await
        ),
        GroupError::UnknownMember(_)
    ));
    // Nothing refused was written; other groups are apart.
    assert_eq!(
        i.group_offsets(t.id, "g").await.unwrap(),
        BTreeMap::from([(0, 5), (1, 7)])
    );
    assert!(i.group_offsets(t.id, "other").await.unwrap().is_empty());
    // Deleting the topic deletes its groups' offsets.
    assert!(i.delete_topic("t").await.unwrap());
    assert!(i.group_offsets(t.id, "g").await.unwrap().is_empty());
}

/// A commit racing a membership change either lands before it or is refused: once one
/// commit of the old generation is fenced, none lands after, and the stored offset is the
/// last accepted one.
async fn offset_commits_race_membership_changes(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    let key = group_key(t.id, "g");
    let g1 = group_of(&["a"], 1000, 2);
    assert!(
        i.store_state(&key, None, floe_core::stored::encode(&g1).unwrap())
            .await
            .unwrap()
    );
    let committer = {
        let (i, g1) = (i.clone(), g1.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            for n in 1..=200u64 {
                let r = i
                    .commit_offsets(offset_commit(t.id, &g1, "a", vec![(0, n)], 1100))
                    .await;
                results.push((n, r.is_ok()));
                if let Err(e) = r {
                    assert!(matches!(e, IndexError::Fenced(_)), "{e}");
                }
            }
            results
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // "b" joins: a new generation, "a" keeps only one partition.
    let g2 = group_of(&["a", "b"], 1000, 2);
    let v = i.load_state(&key).await.unwrap().unwrap();
    assert!(
        i.store_state(
            &key,
            Some(v.version),
            floe_core::stored::encode(&g2).unwrap()
        )
        .await
        .unwrap()
    );
    let results = committer.await.unwrap();
    let first_refused = results.iter().position(|(_, ok)| !ok);
    if let Some(f) = first_refused {
        assert!(
            results[f..].iter().all(|(_, ok)| !ok),
            "a commit landed after the fence: {results:?}"
        );
    }
    let last_ok = results.iter().rev().find(|(_, ok)| *ok).map(|(n, _)| *n);
    assert_eq!(
        i.group_offsets(t.id, "g").await.unwrap().get(&0).copied(),
        last_ok
    );
}

fn idem(topic_id: i64, key: &str, fingerprint: u64, token: i64, now: i64) -> IdempotencyBegin {
    IdempotencyBegin {
        topic_id,
        key: key.into(),
        fingerprint,
        token,
        now_ms: now,
        lease_until_ms: now + 100,
        expires_ms: now + 1000,
    }
}

/// Idempotency keys (RFC 0003): held by one attempt, completed inside the commit that
/// assigns the request's offsets, replayed to retries, refused for another request or
/// while held, taken over after the lease, released on failure, forgotten after expiry.
async fn idempotency_keys_complete_in_the_commit(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    let begin = |b| {
        let i = i.clone();
        async move { i.idempotency_begin(b).await.unwrap() }
    };
    assert_eq!(
        begin(idem(t.id, "k", 7, 1, 0)).await,
        IdempotencyVerdict::Started
    );
    assert_eq!(
        begin(idem(t.id, "k", 7, 2, 10)).await,
        IdempotencyVerdict::InFlight
    );
    assert_eq!(
        begin(idem(t.id, "k", 8, 2, 10)).await,
        IdempotencyVerdict::Mismatch
    );
    // Commit the attempt's records: runs for partition 1 (2 records) and 0 (1 record).
    let mut commit = seg("s1", vec![run(t.id, 1, 2), run(t.id, 0, 1)]);
    commit.idempotency = vec![IdempotencyCompletion {
        topic_id: t.id,
        key: "k".into(),
        token: 1,
        places: vec![(1, 0), (0, 0), (0, 1)],
    }];
    let _ = i.commit(commit).await.unwrap();
    assert_eq!(
        begin(idem(t.id, "k", 7, 3, 20)).await,
        IdempotencyVerdict::Replay(vec![(0, 0), (1, 0), (1, 1)])
    );
    assert_eq!(
        begin(idem(t.id, "k", 8, 3, 20)).await,
        IdempotencyVerdict::Mismatch
    );
    // A commit completing a key its attempt does not hold lands nothing.
    assert_eq!(
        begin(idem(t.id, "j", 7, 1, 0)).await,
        IdempotencyVerdict::Started
    );
    let mut stolen = seg("s2", vec![run(t.id, 0, 1)]);
    stolen.idempotency = vec![IdempotencyCompletion {
        topic_id: t.id,
        key: "j".into(),
        token: 99,
        places: vec![(0, 0)],
    }];
    assert!(matches!(
        i.commit(stolen).await,
        Err(IndexError::IdempotencyLost(_))
    ));
    assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(1), "rolled back");
    // After the lease (100 ms) a new attempt takes the pending key over; the old one's
    // completion is then refused.
    assert_eq!(
        begin(idem(t.id, "j", 7, 2, 150)).await,
        IdempotencyVerdict::Started
    );
    let mut late = seg("s3", vec![run(t.id, 0, 1)]);
    late.idempotency = vec![IdempotencyCompletion {
        topic_id: t.id,
        key: "j".into(),
        token: 1,
        places: vec![(0, 0)],
    }];
    assert!(matches!(
        i.commit(late).await,
        Err(IndexError::IdempotencyLost(_))
    ));
    // Abandoned: free at once.
    i.idempotency_abandon(t.id, "j", 2).await.unwrap();
    assert_eq!(
        begin(idem(t.id, "j", 5, 4, 160)).await,
        IdempotencyVerdict::Started
    );
    // Abandoning never frees a completed key.
    i.idempotency_abandon(t.id, "k", 1).await.unwrap();
    assert!(matches!(
        begin(idem(t.id, "k", 7, 5, 200)).await,
        IdempotencyVerdict::Replay(_)
    ));
    // Expiry: "k" expires at 1000; pending "j" (lease 260, expiry 1160) survives until 1160.
    assert_eq!(i.expire_idempotency(999).await.unwrap(), 0);
    assert_eq!(i.expire_idempotency(1000).await.unwrap(), 1);
    assert_eq!(
        begin(idem(t.id, "k", 8, 6, 1001)).await,
        IdempotencyVerdict::Started,
        "forgotten"
    );
    // Keys are per topic and go with their topic.
    let u = i.create_topic(new_topic("u", 1)).await.unwrap();
    assert_eq!(
        begin(idem(u.id, "k", 1, 1, 1001)).await,
        IdempotencyVerdict::Started
    );
    assert!(i.delete_topic("t").await.unwrap());
    assert_eq!(
        begin(idem(t.id, "k", 9, 7, 1002)).await,
        IdempotencyVerdict::Started
    );
}

/// The deletion boundary (RFC 0004) only moves forward, and a segment created before it
/// is never committed: the whole commit is refused and lands nothing.
async fn segments_older_than_the_deletion_boundary_are_never_committed(i: Idx) {
    let t = i.create_topic(new_topic("t", 1)).await.unwrap();
    assert_eq!(i.advance_deletion_boundary(1000).await.unwrap(), 1000);
    assert_eq!(
        i.advance_deletion_boundary(500).await.unwrap(),
        1000,
        "never back"
    );
    let mut old = seg("old", vec![run(t.id, 0, 3)]);
    old.created_ms = 999;
    assert!(matches!(
        i.commit(old).await,
        Err(IndexError::SegmentTooOld {
            created_ms: 999,
            boundary_ms: 1000
        })
    ));
    assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(0));
    assert!(!referenced(&i, "old").await);
    let mut fresh = seg("fresh", vec![run(t.id, 0, 3)]);
    fresh.created_ms = 1000;
    let _ = i.commit(fresh).await.unwrap();
    assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(3));
}

/// Retention (RFC 0004): the prefix of runs whose newest record is older than the cutoff
/// is dropped and the start offset advances; a live run stops it; commits stay dense.
async fn retention_drops_expired_runs_and_advances_the_start(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    let timed = |records, max_ts| RunCommit {
        min_timestamp_ms: max_ts,
        max_timestamp_ms: max_ts,
        ..run(t.id, 0, records)
    };
    for (n, (records, ts)) in [(2, 100), (3, 200), (1, 300), (4, 150)]
        .into_iter()
        .enumerate()
    {
        let _ = i
            .commit(seg(&format!("s{n}"), vec![timed(records, ts)]))
            .await
            .unwrap();
    }
    // Runs: 0..2 @100, 2..5 @200, 5..6 @300, 6..10 @150 (a clock step back).
    assert_eq!(i.apply_retention(t.id, 50).await.unwrap(), vec![]);
    assert_eq!(i.apply_retention(t.id, 250).await.unwrap(), vec![(0, 5)]);
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!((offs[0].start_offset, offs[0].end_offset), (5, 10));
    assert_eq!(
        (offs[1].start_offset, offs[1].end_offset),
        (0, 0),
        "other partition untouched"
    );
    let runs = runs_from(&i, t.id, 0, 0, 100).await.unwrap();
    assert_eq!(
        runs.first().map(|r| r.base_offset),
        Some(5),
        "dropped runs are gone"
    );
    assert!(!referenced(&i, "s0").await);
    assert!(referenced(&i, "s2").await);
    // The run at 300 is live: the older run behind it (150) waits.
    assert_eq!(i.apply_retention(t.id, 250).await.unwrap(), vec![]);
    assert_eq!(i.apply_retention(t.id, 1000).await.unwrap(), vec![(0, 10)]);
    let _ = i.commit(seg("s9", vec![timed(1, 2000)])).await.unwrap();
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!(
        (offs[0].start_offset, offs[0].end_offset),
        (10, 11),
        "still dense"
    );
}

/// Retention by size (RFC 0004): the oldest whole runs go until the partition holds at
/// most the budget; the newest run always stays; offsets stay dense after it.
async fn size_retention_drops_the_oldest_runs_beyond_the_budget(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    // run() entries take bytes 4..100 = 96 bytes each.
    for (n, records) in [2u32, 3, 1, 4].into_iter().enumerate() {
        let _ = i
            .commit(seg(&format!("s{n}"), vec![run(t.id, 0, records)]))
            .await
            .unwrap();
    }
    let _ = i.commit(seg("o", vec![run(t.id, 1, 5)])).await.unwrap();
    assert_eq!(i.apply_size_retention(t.id, 4 * 96).await.unwrap(), vec![]);
    // 384 bytes in 4 runs; a budget of 200 keeps the newest two (192 bytes).
    assert_eq!(
        i.apply_size_retention(t.id, 200).await.unwrap(),
        vec![(0, 5)]
    );
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!((offs[0].start_offset, offs[0].end_offset), (5, 10));
    assert_eq!(
        (offs[1].start_offset, offs[1].end_offset),
        (0, 5),
        "one run: kept"
    );
    assert!(!referenced(&i, "s1").await);
    assert!(referenced(&i, "s2").await);
    // A budget of 1 byte still keeps the newest run of each partition.
    assert_eq!(i.apply_size_retention(t.id, 1).await.unwrap(), vec![(0, 6)]);
    let _ = i.commit(seg("s9", vec![run(t.id, 0, 1)])).await.unwrap();
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!(
        (offs[0].start_offset, offs[0].end_offset),
        (6, 11),
        "still dense"
    );
}

/// Compaction's swap (RFC 0004): exactly the entries read are replaced, atomically, by the
/// partition file's row groups at the same offsets; anything changed meanwhile (retention,
/// another compactor, a deleted topic) makes it a no-op; the deletion boundary fences it.
async fn replace_runs_swaps_exactly_what_was_read(i: Idx) {
    let t = i.create_topic(new_topic("t", 2)).await.unwrap();
    for (n, records) in [2u32, 3, 1, 4].into_iter().enumerate() {
        let _ = i
            .commit(seg(&format!("s{n}"), vec![run(t.id, 0, records)]))
            .await
            .unwrap();
    }
    // Entries: 0..2 s0, 2..5 s1, 5..6 s2, 6..10 s3. Compact 2..6 into two row groups.
    let old = |from: usize, to: usize| -> Vec<(u64, u32, String)> {
        let all = [(0, 2), (2, 3), (5, 1), (6, 4)];
        all[from..to]
            .iter()
            .enumerate()
            .map(|(k, (b, n))| (*b, *n, format!("s{}", from + k)))
            .collect()
    };
    let file = |key: &str, old: Vec<(u64, u32, String)>, groups: &[u32], created_ms| ReplaceRuns {
        topic_id: t.id,
        partition: 0,
        old,
        key: key.into(),
        size: 500,
        runs: groups
            .iter()
            .enumerate()
            .map(|(g, n)| RunCommit {
                row_group_first: g as u32,
                ..run(t.id, 0, *n)
            })
            .collect(),
        rows: vec![],
        created_ms,
    };
    // Malformed: the new entries must hold the same records.
    assert!(matches!(
        i.replace_runs(file("bad", old(1, 3), &[3], 0)).await,
        Err(IndexError::Corrupt(_))
    ));
    // Stale: the caller read something else than what is there.
    let mut stale = old(1, 3);
    stale[1].2 = "elsewhere".into();
    assert!(!i.replace_runs(file("f0", stale, &[3, 1], 0)).await.unwrap());
    assert!(
        i.replace_runs(file("f1", old(1, 3), &[3, 1], 0))
            .await
            .unwrap()
    );
    let runs = runs_from(&i, t.id, 0, 0, 100).await.unwrap();
    let got: Vec<(u64, u32, &str, u32)> = runs
        .iter()
        .map(|r| {
            (
                r.base_offset,
                r.records,
                r.segment_key.as_str(),
                r.row_group_first,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 2, "s0", 0),
            (2, 3, "f1", 0),
            (5, 1, "f1", 1),
            (6, 4, "s3", 0)
        ]
    );
    assert!(!referenced(&i, "s1").await);
    assert!(referenced(&i, "f1").await);
    // A second compactor with the same (now stale) view changes nothing.
    assert!(
        !i.replace_runs(file("f2", old(1, 3), &[4], 0))
            .await
            .unwrap()
    );
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!((offs[0].start_offset, offs[0].end_offset), (0, 10));
    // A fetch in the middle of a partition-file entry finds it.
    let from7 = runs_from(&i, t.id, 0, 5, 1).await.unwrap();
    assert_eq!(from7[0].segment_key, "f1");
    // Retention took the entries meanwhile (every run's newest record is at 0 < 1): the
    // swap of one of them is refused.
    assert_eq!(i.apply_retention(t.id, 1).await.unwrap(), vec![(0, 10)]);
    assert!(
        !i.replace_runs(file("f3", old(3, 4), &[4], 0))
            .await
            .unwrap()
    );
    // The boundary fences a file created before it.
    let t2 = i.create_topic(new_topic("t2", 1)).await.unwrap();
    let _ = i.commit(seg("u0", vec![run(t2.id, 0, 2)])).await.unwrap();
    let _ = i.advance_deletion_boundary(1_000).await.unwrap();
    let r = ReplaceRuns {
        topic_id: t2.id,
        partition: 0,
        old: vec![(0, 2, "u0".into())],
        key: "g".into(),
        size: 10,
        runs: vec![run(t2.id, 0, 2)],
        rows: vec![],
        created_ms: 999,
    };
    assert!(matches!(
        i.replace_runs(r.clone()).await,
        Err(IndexError::SegmentTooOld { .. })
    ));
    assert!(
        i.replace_runs(ReplaceRuns {
            created_ms: 1_000,
            ..r.clone()
        })
        .await
        .unwrap()
    );
    // A deleted topic: nothing to swap.
    assert!(i.delete_topic("t2").await.unwrap());
    assert!(
        !i.replace_runs(ReplaceRuns {
            created_ms: 1_000,
            key: "g2".into(),
            ..r
        })
        .await
        .unwrap()
    );
}

/// A compacted topic's cleaned file (RFC 0004): its entries cover the replaced offsets but
/// hold fewer rows; the index keeps both, so offsets never move and fetches skip the gaps.
async fn a_cleaned_file_keeps_offsets_with_fewer_rows(i: Idx) {
    let t = i.create_topic(new_topic("kv", 1)).await.unwrap();
    for (n, records) in [5u32, 5, 2].into_iter().enumerate() {
        let _ = i
            .commit(seg(&format!("k{n}"), vec![run(t.id, 0, records)]))
            .await
            .unwrap();
    }
    let swap = |runs: &[u32], rows: Vec<u32>| ReplaceRuns {
        topic_id: t.id,
        partition: 0,
        old: vec![(0, 5, "k0".into()), (5, 5, "k1".into())],
        key: "clean".into(),
        size: 100,
        runs: runs
            .iter()
            .enumerate()
            .map(|(g, n)| RunCommit {
                row_group_first: g as u32,
                ..run(t.id, 0, *n)
            })
            .collect(),
        rows,
        created_ms: 0,
    };
    for bad in [
        swap(&[4, 6], vec![5, 2]), // more rows than offsets
        swap(&[4, 6], vec![0, 2]), // an entry without rows
        swap(&[4, 6], vec![2]),    // rows for some entries only
    ] {
        assert!(matches!(
            i.replace_runs(bad).await,
            Err(IndexError::Corrupt(_))
        ));
    }
    assert!(i.replace_runs(swap(&[4, 6], vec![1, 3])).await.unwrap());
    let got: Vec<(u64, u32, u32, String)> = runs_from(&i, t.id, 0, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.base_offset, r.records, r.rows, r.segment_key))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 4, 1, "clean".to_string()),
            (4, 6, 3, "clean".to_string()),
            (10, 2, 2, "k2".to_string()),
        ]
    );
    let offs = i.partition_offsets(t.id).await.unwrap();
    assert_eq!((offs[0].start_offset, offs[0].end_offset), (0, 12));
    // A lookup inside a gap finds the entry that covers it.
    assert_eq!(
        runs_from(&i, t.id, 0, 7, 1).await.unwrap()[0].base_offset,
        4
    );
    // Cleaning again replaces the sparse entries as read (offsets covered, not rows).
    let again = ReplaceRuns {
        old: vec![(0, 4, "clean".into()), (4, 6, "clean".into())],
        key: "clean2".into(),
        runs: vec![run(t.id, 0, 10)],
        rows: vec![2],
        ..swap(&[], vec![])
    };
    assert!(i.replace_runs(again).await.unwrap());
    assert_eq!(runs_from(&i, t.id, 0, 0, 1).await.unwrap()[0].rows, 2);
}

/// Objects are recorded with the commit that makes them live (RFC 0004), so the sweeper
/// finds the deletable ones — created before a time, referenced by no run — with one query.
async fn objects_are_recorded_and_found_once_unreferenced(i: Idx) {
    let t = i.create_topic(new_topic("o1", 1)).await.unwrap();
    let t2 = i.create_topic(new_topic("o2", 1)).await.unwrap();
    let at = |key: &str, created_ms, runs| SegmentCommit {
        created_ms,
        size: 1000,
        ..seg(key, runs)
    };
    let _ = i.commit(at("a", 10, vec![run(t.id, 0, 2)])).await.unwrap();
    let _ = i.commit(at("b", 20, vec![run(t2.id, 0, 3)])).await.unwrap();
    let _ = i.commit(at("c", 30, vec![run(t.id, 0, 1)])).await.unwrap();
    assert_eq!(i.object_totals().await.unwrap(), (3, 3000));
    assert!(
        i.unreferenced_objects(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A deleted topic's object; a compaction's replaced objects.
    assert!(i.delete_topic("o2").await.unwrap());
    let swap = ReplaceRuns {
        topic_id: t.id,
        partition: 0,
        old: vec![(0, 2, "a".into()), (2, 1, "c".into())],
        key: "f".into(),
        size: 500,
        runs: vec![run(t.id, 0, 3)],
        rows: vec![],
        created_ms: 40,
    };
    assert!(i.replace_runs(swap).await.unwrap());
    assert_eq!(i.object_totals().await.unwrap(), (4, 3500));
    assert_eq!(
        i.unreferenced_objects(i64::MAX, 10).await.unwrap(),
        ["a", "b", "c"],
        "oldest first"
    );
    assert_eq!(i.unreferenced_objects(25, 10).await.unwrap(), ["a", "b"]);
    assert_eq!(i.unreferenced_objects(i64::MAX, 1).await.unwrap(), ["a"]);
    i.forget_objects(&["a".into(), "b".into(), "nothing".into()])
        .await
        .unwrap();
    assert_eq!(i.unreferenced_objects(i64::MAX, 10).await.unwrap(), ["c"]);
    assert_eq!(i.object_totals().await.unwrap(), (2, 1500));
    // A commit whose runs all belong to a deleted topic still records its object, which
    // is unreferenced at once.
    let _ = i.commit(at("d", 50, vec![run(t2.id, 0, 1)])).await.unwrap();
    assert_eq!(
        i.unreferenced_objects(i64::MAX, 10).await.unwrap(),
        ["c", "d"]
    );
}

fn preq(pid: i64, epoch: u32, topic_id: i64, b: &[(u32, i64, u32, u32, u32)]) -> ProducerAppend {
    ProducerAppend {
        producer_id: pid,
        epoch,
        batches: b
            .iter()
            .map(|&(partition, first_seq, run, pos, count)| ProducerBatch {
                topic_id,
                partition,
                first_seq,
                run,
                pos,
                count,
            })
            .collect(),
        transactional: false,
    }
}

fn txn_req(pid: i64, epoch: u32, topic_id: i64, b: &[(u32, i64, u32, u32, u32)]) -> ProducerAppend {
    ProducerAppend {
        transactional: true,
        ..preq(pid, epoch, topic_id, b)
    }
}

fn begin(pid: i64, epoch: u32, now: i64) -> BeginTxn {
    BeginTxn {
        producer_id: pid,
        epoch,
        now_ms: now,
        deadline_ms: now + 60_000,
        check_url: None,
    }
}

fn end(pid: i64, epoch: u32, outcome: Outcome) -> EndTxn {
    EndTxn {
        producer_id: pid,
        epoch,
        outcome,
        offsets: Vec::new(),
        now_ms: 100,
    }
}

/// (base, records, rows) of every entry of a partition.
async fn entries(i: &Idx, t: i64, p: u32) -> Vec<(u64, u32, u32)> {
    runs_from(i, t, p, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.base_offset, e.records, e.rows))
        .collect()
}

fn txn_refusal(r: floe_index::Result<impl std::fmt::Debug>) -> TxnError {
    match r {
        Err(IndexError::Txn(e)) => e,
        other => panic!("expected a transaction refusal, got {other:?}"),
    }
}

/// Transactions (RFC 0005): each is an epoch; its records hold the stable offset while it
/// is open; a commit releases them, an abort turns them into holes (offsets kept, rows no
/// longer served) around other producers' records; an end naming another epoch never
/// ends the current one; repeated ends answer the same, the other outcome is refused;
/// re-initialising the name aborts the open transaction.
async fn transactions_hold_the_stable_offset_and_aborts_leave_holes(i: Idx) {
    let t = i.create_topic(new_topic("tx", 2)).await.unwrap();
    let (pid, e0) = i.init_producer(Some("txn-app"), 10).await.unwrap();
    // Refusals: unknown producer, stale epoch.
    assert_eq!(
        txn_refusal(i.begin_txn(begin(424_242, 0, 10)).await),
        TxnError::UnknownProducer(424_242)
    );
    assert!(matches!(
        txn_refusal(i.begin_txn(begin(pid, e0 + 7, 10)).await),
        TxnError::Fenced { .. }
    ));
    let e1 = i.begin_txn(begin(pid, e0, 10)).await.unwrap();
    assert_eq!(e1, e0 + 1, "a transaction is the next epoch");
    assert_eq!(
        txn_refusal(i.begin_txn(begin(pid, e1, 11)).await),
        TxnError::AlreadyOpen {
            producer_id: pid,
            epoch: e1
        }
    );
    // A plain record, then the transaction's 3 records, then a plain one, in one run of
    // partition 0; the transaction's 2 records in partition 1.
    let mut s = seg("t1", vec![run(t.id, 0, 5), run(t.id, 1, 2)]);
    s.producers = vec![txn_req(pid, e1, t.id, &[(0, 0, 0, 1, 3), (1, 0, 1, 0, 2)])];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(c.producers, vec![RequestCheck::Append]);
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((5, 1)));
    assert_eq!(i.log_ends(t.id, 1).await.unwrap(), Some((2, 0)));
    let po = i.partition_offsets(t.id).await.unwrap();
    assert_eq!((po[0].end_offset, po[0].stable_offset), (5, 1));
    // A plain request of the open epoch is refused; so is a transactional one of an epoch
    // without an open transaction (another producer).
    let (other, oe) = i.init_producer(None, 10).await.unwrap();
    let mut s = seg("t2", vec![run(t.id, 0, 2)]);
    s.producers = vec![
        preq(pid, e1, t.id, &[(0, 3, 0, 0, 1)]),
        txn_req(other, oe, t.id, &[(0, 0, 0, 1, 1)]),
    ];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(
        c.producers,
        vec![
            RequestCheck::Refused(Refusal::TransactionOpen),
            RequestCheck::Refused(Refusal::TransactionNotOpen)
        ]
    );
    let open = i.transactions(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].name.as_deref(), Some("txn-app"));
    assert_eq!(open[0].partitions, vec![(t.id, 0, 1, 3), (t.id, 1, 0, 2)]);
    // An end naming an older epoch is not this transaction.
    assert!(matches!(
        txn_refusal(i.end_txn(end(pid, e0, Outcome::Commit)).await),
        TxnError::Unknown { .. }
    ));
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((5, 1)));
    // Abort: holes where its records were, the rest served as before.
    let ended = i.end_txn(end(pid, e1, Outcome::Abort)).await.unwrap();
    assert!(!ended.repeated);
    let mut parts = ended.partitions.clone();
    parts.sort_unstable();
    assert_eq!(parts, vec![(t.id, 0, 5), (t.id, 1, 2)]);
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((5, 5)));
    assert_eq!(i.log_ends(t.id, 1).await.unwrap(), Some((2, 2)));
    assert_eq!(
        entries(&i, t.id, 0).await,
        vec![(0, 1, 1), (1, 3, 0), (4, 1, 1)]
    );
    assert_eq!(entries(&i, t.id, 1).await, vec![(0, 2, 0)]);
    let rows = runs_from(&i, t.id, 0, 4, 10).await.unwrap();
    assert_eq!(
        rows[0].row_first, 4,
        "the row after the hole keeps its place"
    );
    // Repeated abort: same answer; commit after abort: refused.
    assert!(
        i.end_txn(end(pid, e1, Outcome::Abort))
            .await
            .unwrap()
            .repeated
    );
    assert!(matches!(
        txn_refusal(i.end_txn(end(pid, e1, Outcome::Commit)).await),
        TxnError::Ended {
            state: TxnState::Aborted,
            ..
        }
    ));
    // The next transaction commits: records stay, the stable offset moves to the end.
    let e2 = i.begin_txn(begin(pid, e1, 20)).await.unwrap();
    let mut s = seg("t3", vec![run(t.id, 0, 2)]);
    s.producers = vec![txn_req(pid, e2, t.id, &[(0, 0, 0, 0, 2)])];
    assert_eq!(
        i.commit_segment(s).await.unwrap().producers,
        vec![RequestCheck::Append]
    );
    // Two open transactions in one partition: the older holds the stable offset.
    let (pid_b, eb0) = i.init_producer(Some("txn-b"), 10).await.unwrap();
    let eb = i.begin_txn(begin(pid_b, eb0, 21)).await.unwrap();
    let mut s = seg("t4", vec![run(t.id, 0, 1)]);
    s.producers = vec![txn_req(pid_b, eb, t.id, &[(0, 0, 0, 0, 1)])];
    let _ = i.commit_segment(s).await.unwrap();
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((8, 5)));
    let c = i.end_txn(end(pid, e2, Outcome::Commit)).await.unwrap();
    assert!(!c.repeated);
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((8, 7)));
    assert!(
        i.end_txn(end(pid, e2, Outcome::Commit))
            .await
            .unwrap()
            .repeated
    );
    assert!(matches!(
        txn_refusal(i.end_txn(end(pid, e2, Outcome::Abort)).await),
        TxnError::Ended {
            state: TxnState::Committed,
            ..
        }
    ));
    assert_eq!(entries(&i, t.id, 0).await[3..], [(5, 2, 2), (7, 1, 1)]);
    // Re-initialising "txn-b" aborts its open transaction (the zombie is fenced).
    let (again, eb_new) = i.init_producer(Some("txn-b"), 30).await.unwrap();
    assert_eq!(again, pid_b);
    assert!(eb_new > eb);
    assert_eq!(i.log_ends(t.id, 0).await.unwrap(), Some((8, 8)));
    assert_eq!(entries(&i, t.id, 0).await[4..], [(7, 1, 0)]);
    assert!(i.transactions(true).await.unwrap().is_empty());
    let all = i.transactions(false).await.unwrap();
    assert_eq!(
        all.iter().map(|x| x.state).collect::<Vec<_>>(),
        vec![TxnState::Aborted, TxnState::Committed, TxnState::Aborted]
    );
    // A check-back claim is counted once per `checks` value.
    let (pid_h, eh0) = i.init_producer(None, 40).await.unwrap();
    let eh = i
        .begin_txn(BeginTxn {
            check_url: Some("http://127.0.0.1:1/check".into()),
            ..begin(pid_h, eh0, 40)
        })
        .await
        .unwrap();
    let (open, due) = i.due_transactions(60_040, 10).await.unwrap();
    assert_eq!(open, 1);
    assert!(due.is_empty(), "not due at its deadline");
    let (_, due) = i.due_transactions(60_041, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].check_url.as_deref(),
        Some("http://127.0.0.1:1/check")
    );
    assert!(i.claim_check(pid_h, eh, 0, 500).await.unwrap());
    assert!(
        !i.claim_check(pid_h, eh, 0, 500).await.unwrap(),
        "claimed twice"
    );
    let h = i.transactions(true).await.unwrap();
    assert_eq!((h[0].checks, h[0].deadline_ms), (1, 500));
}

/// A commit fenced by its group aborts nothing: the transaction stays open; offsets land
/// only with a commit.
async fn transactional_offsets_commit_with_the_transaction(i: Idx) {
    let t = i.create_topic(new_topic("txo", 2)).await.unwrap();
    let key = group_key(t.id, "g");
    let g = group_of(&["m1"], 0, 2);
    assert!(
        i.store_state(&key, None, floe_core::stored::encode(&g).unwrap())
            .await
            .unwrap()
    );
    let (pid, e0) = i.init_producer(Some("ctp"), 10).await.unwrap();
    let e1 = i.begin_txn(begin(pid, e0, 10)).await.unwrap();
    let mut bad = end(pid, e1, Outcome::Commit);
    bad.offsets = vec![offset_commit(t.id, &g, "intruder", vec![(0, 5)], 100)];
    assert!(matches!(
        txn_refusal(i.end_txn(bad).await),
        TxnError::Offsets(_)
    ));
    assert!(i.group_offsets(t.id, "g").await.unwrap().is_empty());
    assert_eq!(i.transactions(true).await.unwrap().len(), 1);
    let mut good = end(pid, e1, Outcome::Commit);
    good.offsets = vec![offset_commit(t.id, &g, "m1", vec![(0, 5), (1, 7)], 100)];
    let _ = i.end_txn(good).await.unwrap();
    assert_eq!(
        i.group_offsets(t.id, "g").await.unwrap(),
        BTreeMap::from([(0, 5), (1, 7)])
    );
}

/// Producer sessions (RFC 0003 part 2): sequences are checked in the commit, each request
/// gets its own verdict, refused and duplicate rows are taken out of their run, epochs
/// fence, expiry forgets.
async fn producer_sequences_are_checked_in_the_commit(i: Idx) {
    let t = i.create_topic(new_topic("ps", 2)).await.unwrap();
    let (pid, e0) = i.init_producer(Some("app-1"), 10).await.unwrap();
    assert_eq!(e0, 0);
    let (anon_a, ea) = i.init_producer(None, 10).await.unwrap();
    let (anon_b, _) = i.init_producer(None, 10).await.unwrap();
    assert_eq!(ea, 0);
    assert!(
        anon_a != anon_b && anon_a != pid,
        "anonymous producers get fresh ids"
    );
    // A plain record, then producer batch seq 0..3 on partition 0.
    let mut s = seg("p1", vec![run(t.id, 0, 4)]);
    s.producers = vec![preq(pid, 0, t.id, &[(0, 0, 0, 1, 3)])];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(c.producers, vec![RequestCheck::Append]);
    assert_eq!(c.runs, vec![RunOutcome::Committed { base_offset: 0 }]);
    assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(4));
    // The retry (a lost answer), the next batch, a gap and an unknown producer, all in one
    // segment: the retry is answered with offset 1 and written nowhere; the gap and the
    // unknown producer are refused; the next batch and the plain record commit.
    let mut s = seg("p2", vec![run(t.id, 0, 10)]);
    s.producers = vec![
        preq(pid, 0, t.id, &[(0, 0, 0, 0, 3)]),
        preq(pid, 0, t.id, &[(0, 3, 0, 3, 2)]),
        preq(anon_a, 0, t.id, &[(0, 7, 0, 5, 1)]),
        preq(987_654, 0, t.id, &[(0, 0, 0, 6, 1)]),
    ];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(
        c.producers,
        vec![
            RequestCheck::Duplicate(vec![1]),
            RequestCheck::Append,
            RequestCheck::Refused(Refusal::OutOfOrder {
                partition: 0,
                expected: 0,
                got: 7
            }),
            RequestCheck::Refused(Refusal::UnknownProducer),
        ]
    );
    assert_eq!(c.excluded, vec![vec![(0, 3), (5, 1), (6, 1)]]);
    // Kept: rows 3..5 (the next batch) and 7..10 (plain): 5 records at 4..9.
    assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(9));
    let entries = runs_from(&i, t.id, 0, 4, 10).await.unwrap();
    let pieces: Vec<(u64, u32, u32)> = entries
        .iter()
        .filter(|e| e.segment_key == "p2")
        .map(|e| (e.base_offset, e.row_first, e.records))
        .collect();
    assert_eq!(pieces, vec![(4, 3, 2), (6, 7, 3)]);
    // The batch at 4 is replayed from the stored state, in a later commit too.
    let mut s = seg("p3", vec![run(t.id, 0, 2)]);
    s.producers = vec![preq(pid, 0, t.id, &[(0, 3, 0, 0, 2)])];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(c.producers, vec![RequestCheck::Duplicate(vec![4])]);
    assert_eq!(
        i.end_offset(t.id, 0).await.unwrap(),
        Some(9),
        "nothing written"
    );
    // Re-initialising the name bumps the epoch and fences the old session.
    let (pid2, e1) = i.init_producer(Some("app-1"), 20).await.unwrap();
    assert_eq!((pid2, e1), (pid, 1));
    let mut s = seg("p4", vec![run(t.id, 1, 2)]);
    s.producers = vec![
        preq(pid, 0, t.id, &[(1, 5, 0, 0, 1)]),
        preq(pid, 1, t.id, &[(1, 0, 0, 1, 1)]),
    ];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(
        c.producers,
        vec![
            RequestCheck::Refused(Refusal::Fenced { current: 1 }),
            RequestCheck::Append
        ]
    );
    assert_eq!(i.end_offset(t.id, 1).await.unwrap(), Some(1));
    // Expiry forgets idle state (touched at the segments' created_ms, 0 here) and
    // producers with none left that were initialised before the cutoff.
    assert!(i.expire_producers(15).await.unwrap() >= 2);
    let mut s = seg("p5", vec![run(t.id, 0, 1)]);
    s.producers = vec![preq(anon_b, 0, t.id, &[(0, 0, 0, 0, 1)])];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(
        c.producers,
        vec![RequestCheck::Refused(Refusal::UnknownProducer)],
        "anonymous producer initialised at 10 < 15 with no state is gone"
    );
    let mut s = seg("p6", vec![run(t.id, 0, 1)]);
    s.producers = vec![preq(pid, 1, t.id, &[(0, 0, 0, 0, 1)])];
    let c = i.commit_segment(s).await.unwrap();
    assert_eq!(
        c.producers,
        vec![RequestCheck::Append],
        "named producer kept (init at 20)"
    );
}

/// Two agents commit the same batch of one producer at once (a retry racing the first
/// attempt): exactly one appends, the other is answered with its offsets.
async fn concurrent_retries_of_a_batch_append_once(i: Idx) {
    let t = i.create_topic(new_topic("pr", 1)).await.unwrap();
    let (pid, e) = i.init_producer(Some("racer"), 0).await.unwrap();
    for round in 0..10i64 {
        let mk = |k: &str| {
            let mut s = seg(k, vec![run(t.id, 0, 2)]);
            s.producers = vec![preq(pid, e, t.id, &[(0, round * 2, 0, 0, 2)])];
            s
        };
        let (a, b) = tokio::join!(
            i.commit_segment(mk(&format!("ra{round}"))),
            i.commit_segment(mk(&format!("rb{round}")))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let base = u64::try_from(round * 2).unwrap();
        let mut got = vec![a.producers[0].clone(), b.producers[0].clone()];
        got.sort_by_key(|v| matches!(v, RequestCheck::Duplicate(_)));
        assert_eq!(
            got,
            vec![RequestCheck::Append, RequestCheck::Duplicate(vec![base])]
        );
        assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(base + 2));
    }
}

/// Runs every clause against one backend: `$open` is an async expression giving a fresh
/// `Idx` (and something to keep alive while it is used).
macro_rules! conformance {
    ($open:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn topics_roundtrip() {
            let (_g, i) = $open().await;
            super::topics_roundtrip(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn commit_assigns_dense_offsets() {
            let (_g, i) = $open().await;
            super::commit_assigns_dense_offsets(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn commit_past_its_deadline_lands_nothing() {
            let (_g, i) = $open().await;
            super::commit_past_its_deadline_lands_nothing(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_commits_stay_dense() {
            let (_g, i) = $open().await;
            super::concurrent_commits_stay_dense(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delete_and_recreate_is_a_new_incarnation() {
            let (_g, i) = $open().await;
            super::delete_and_recreate_is_a_new_incarnation(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn state_is_compare_and_swap() {
            let (_g, i) = $open().await;
            super::state_is_compare_and_swap(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn state_writes_commit_with_runs_or_not_at_all() {
            let (_g, i) = $open().await;
            super::state_writes_commit_with_runs_or_not_at_all(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn offset_commits_are_fenced_by_the_group_state() {
            let (_g, i) = $open().await;
            super::offset_commits_are_fenced_by_the_group_state(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn offset_commits_race_membership_changes() {
            let (_g, i) = $open().await;
            super::offset_commits_race_membership_changes(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn idempotency_keys_complete_in_the_commit() {
            let (_g, i) = $open().await;
            super::idempotency_keys_complete_in_the_commit(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn segments_older_than_the_deletion_boundary_are_never_committed() {
            let (_g, i) = $open().await;
            super::segments_older_than_the_deletion_boundary_are_never_committed(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retention_drops_expired_runs_and_advances_the_start() {
            let (_g, i) = $open().await;
            super::retention_drops_expired_runs_and_advances_the_start(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn size_retention_drops_the_oldest_runs_beyond_the_budget() {
            let (_g, i) = $open().await;
            super::size_retention_drops_the_oldest_runs_beyond_the_budget(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn replace_runs_swaps_exactly_what_was_read() {
            let (_g, i) = $open().await;
            super::replace_runs_swaps_exactly_what_was_read(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cleaned_file_keeps_offsets_with_fewer_rows() {
            let (_g, i) = $open().await;
            super::a_cleaned_file_keeps_offsets_with_fewer_rows(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn objects_are_recorded_and_found_once_unreferenced() {
            let (_g, i) = $open().await;
            super::objects_are_recorded_and_found_once_unreferenced(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn producer_sequences_are_checked_in_the_commit() {
            let (_g, i) = $open().await;
            super::producer_sequences_are_checked_in_the_commit(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_retries_of_a_batch_append_once() {
            let (_g, i) = $open().await;
            super::concurrent_retries_of_a_batch_append_once(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn transactions_hold_the_stable_offset_and_aborts_leave_holes() {
            let (_g, i) = $open().await;
            super::transactions_hold_the_stable_offset_and_aborts_leave_holes(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn transactional_offsets_commit_with_the_transaction() {
            let (_g, i) = $open().await;
            super::transactional_offsets_commit_with_the_transaction(i).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_cas_loses_no_update() {
            let (_g, i) = $open().await;
            super::concurrent_cas_loses_no_update(i).await;
        }
        #[test]
        fn matches_model() {
            use proptest::prelude::*;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (_g, i) = rt.block_on($open());
            let case = std::sync::atomic::AtomicU32::new(0);
            proptest!(ProptestConfig::with_cases(24), |(ops in proptest::collection::vec(super::op_strategy(), 1..25))| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                rt.block_on(super::matches_model(i.clone(), format!("c{n}_"), ops));
            });
        }
    };
}

mod sqlite {
    use super::*;

    async fn open() -> (tempfile::TempDir, Idx) {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", d.path().join("index.db").display());
        let i = floe_index::open(&url).await.unwrap();
        (d, i)
    }

    conformance!(open);

    /// SQLite only: the index is a file, and what was committed is there after reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", d.path().join("i.db").display());
        let a = {
            let i = floe_index::open(&url).await.unwrap();
            let a = i.create_topic(new_topic("a", 1)).await.unwrap();
            let _ = i.commit(seg("s", vec![run(a.id, 0, 7)])).await.unwrap();
            a
        };
        let i = floe_index::open(&url).await.unwrap();
        assert_eq!(i.get_topic("a").await.unwrap().unwrap(), a);
        assert_eq!(i.end_offset(a.id, 0).await.unwrap(), Some(7));
    }

    /// SQLite only: an index file written before entries had a row count (every entry
    /// dense) opens with the column added, and its entries read as dense.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_from_before_row_counts_migrates() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("old.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE runs (topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
                   base_offset INTEGER NOT NULL, records INTEGER NOT NULL, segment_key TEXT NOT NULL,
                   segment_size INTEGER NOT NULL, rg_first INTEGER NOT NULL, rg_count INTEGER NOT NULL,
                   byte_start INTEGER NOT NULL, byte_end INTEGER NOT NULL, min_ts INTEGER NOT NULL,
                   max_ts INTEGER NOT NULL, row_first INTEGER NOT NULL DEFAULT 0,
                   PRIMARY KEY (topic_id, partition, base_offset)) WITHOUT ROWID;
                 INSERT INTO runs VALUES (1, 0, 0, 5, 'old', 10, 0, 1, 4, 9, 0, 0, 0);",
            )
            .unwrap();
        }
        let i = floe_index::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let r = runs_from(&i, 1, 0, 0, 10).await.unwrap();
        assert_eq!((r.len(), r[0].records, r[0].rows), (1, 5, 5));
    }
}

/// A fresh SQLite index whose recent tables hold `limit` entries before a move.
async fn sqlite_with_recent_limit(limit: u32) -> (tempfile::TempDir, Idx) {
    let d = tempfile::tempdir().unwrap();
    let i = floe_index::SqliteIndex::open(&d.path().join("index.db"))
        .await
        .unwrap()
        .with_recent_limit(limit);
    (d, Arc::new(i))
}

/// SQLite with recent tables of 16 entries: the full one is copied to `runs` a few entries
/// per commit (twice what each commit appends, at least 2) while the other fills, and a
/// commit that fills it before the copy ends finishes the copy itself — so the clauses
/// run with entries in `runs`, in both recent tables, and mid-copy.
mod sqlite_recent_chunks {
    use super::*;

    async fn open() -> (tempfile::TempDir, Idx) {
        sqlite_with_recent_limit(16).await
    }

    conformance!(open);
}

/// SQLite with a tiny `runs_recent` (a move to `runs` every second commit): every clause
/// then reads and rewrites entries split between the two tables, and across moves. (The
/// `sqlite` module above, with the default limit, keeps recent entries in `runs_recent`
/// only; a limit of 1 would be the old layout, `runs` alone.)
mod sqlite_recent_moves {
    use super::*;

    async fn open() -> (tempfile::TempDir, Idx) {
        sqlite_with_recent_limit(2).await
    }

    conformance!(open);

    /// Fetch lookups see every entry wherever it is (`runs`, `runs_recent`, both), in
    /// offset order, from any offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_span_both_tables() {
        let (_g, i) = open().await;
        let t = i.create_topic(new_topic("t", 2)).await.unwrap();
        for n in 0..7u32 {
            let _ = i
                .commit(seg(
                    &format!("s{n}"),
                    vec![run(t.id, 0, n + 1), run(t.id, 1, 1)],
                ))
                .await
                .unwrap();
        }
        // Partition 0: entries of 1, 2, ..., 7 records: bases 0, 1, 3, 6, 10, 15, 21.
        let all = runs_from(&i, t.id, 0, 0, 100).await.unwrap();
        let bases: Vec<u64> = all.iter().map(|e| e.base_offset).collect();
        assert_eq!(bases, vec![0, 1, 3, 6, 10, 15, 21]);
        assert_eq!(all[6].segment_key, "s6");
        for (offset, first) in [(0, 0), (2, 1), (14, 10), (15, 15), (27, 21)] {
            let got = runs_from(&i, t.id, 0, offset, 2).await.unwrap();
            assert_eq!(got[0].base_offset, first, "offset {offset}");
            assert!(got.len() <= 2);
        }
        assert_eq!(i.end_offset(t.id, 0).await.unwrap(), Some(28));
        assert_eq!(runs_from(&i, t.id, 1, 0, 100).await.unwrap().len(), 7);
        for n in 0..7 {
            assert!(i.segment_referenced(&format!("s{n}")).await.unwrap());
        }
    }
}

mod postgres {
    use super::*;

    /// A fresh database on the test server (the suite needs PostgreSQL; `tests/run-all.sh`
    /// starts it).
    async fn open() -> ((), Idx) {
        let i = floe_index::open(&fresh_url().await).await.unwrap();
        ((), i)
    }

    /// The URL of a fresh, empty database on the test server.
    async fn fresh_url() -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin = std::env::var("FLOE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (bash infra/postgres.sh)");
        drop(tokio::spawn(conn));
        let name = format!(
            "floe_conf_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            uuid_like()
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        format!("{base}/{name}")
    }

    /// An index opened next to live agents runs no DDL once the schema is current, so it
    /// takes no table locks: a transaction holding what a commit holds on the runs and
    /// partitions tables does not block it. (`ADD COLUMN IF NOT EXISTS` waited for an
    /// `ACCESS EXCLUSIVE` lock even with nothing to add, and could deadlock with commits.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_a_current_schema_takes_no_table_locks() {
        let url = fresh_url().await;
        let first = floe_index::PostgresIndex::open(&url).await.unwrap();
        assert!(first.schema_is_current().await.unwrap());
        let (mut holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        drop(tokio::spawn(conn));
        let tx = holder.transaction().await.unwrap();
        tx.batch_execute(
            "LOCK TABLE floe_runs IN ROW EXCLUSIVE MODE; LOCK TABLE floe_partitions IN ROW EXCLUSIVE MODE",
        )
        .await
        .unwrap();
        let second = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            floe_index::PostgresIndex::open(&url),
        )
        .await
        .expect("open blocked behind a live transaction's table locks")
        .unwrap();
        tx.commit().await.unwrap();
        second.ping().await.unwrap();
    }

    fn uuid_like() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish() % 1_000_000_000
    }

    conformance!(open);
}
