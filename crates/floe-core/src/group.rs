//! Consumer groups (pub/sub): membership, a balanced sticky assignment, generations and
//! fenced offset commits. Pure state machine; the agent stores it in the index and applies
//! every change with compare-and-swap, so any number of agents can serve one group.
//!
//! Invariants (checked by [`GroupState::check`] in tests):
//! - every partition of the topic is owned by exactly one member while the group has members;
//! - the assignment is balanced: owned counts differ by at most one;
//! - the generation increases on every membership change, and only a member of the current
//!   generation may commit, and only for partitions it owns.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Partitions this member owns in the current generation, ascending.
    pub partitions: Vec<u32>,
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
    /// Commit the previous fetch's positions when the member fetches again.
    #[serde(default)]
    pub auto_commit: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub generation: u64,
    pub members: BTreeMap<String, Member>,
    /// Committed offsets of groups written before offsets became index rows of their own
    /// (RFC 0001): read as a fallback for partitions without a row, never written.
    #[serde(default)]
    pub offsets: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member {0:?} is not in the group (it left or missed its session timeout); join again")]
    UnknownMember(String),
    #[error("generation {given} is stale; the group is at generation {current}")]
    StaleGeneration { given: u64, current: u64 },
    #[error(
        "partition {partition} is not assigned to member {member:?} in generation {generation}"
    )]
    NotOwner {
        member: String,
        partition: u32,
        generation: u64,
    },
    #[error("the group already has {0} members, its limit")]
    Full(usize),
}

impl GroupState {
    /// Remove members whose session expired; rebalance if any was removed.
    /// Returns whether the state changed.
    pub fn expire(&mut self, now_ms: i64, partitions: u32) -> bool {
        let before = self.members.len();
        self.members.retain(|_, m| {
            now_ms.saturating_sub(m.last_seen_ms)
                <= i64::try_from(m.session_timeout_ms).unwrap_or(i64::MAX)
        });
        if self.members.len() == before {
            return false;
        }
        self.rebalance(partitions);
        true
    }

    /// Add a member (or re-join an existing one) and rebalance.
    pub fn join(
        &mut self,
        member_id: &str,
        now_ms: i64,
        member: Member,
        partitions: u32,
        max_members: usize,
    ) -> Result<(), GroupError> {
        if !self.members.contains_key(member_id) && self.members.len() >= max_members {
            return Err(GroupError::Full(max_members));
        }
        let partitions_before = self
            .members
            .get(member_id)
            .map(|m| m.partitions.clone())
            .unwrap_or_default();
        let _ = self.members.insert(
            member_id.to_string(),
            Member {
                partitions: partitions_before,
                last_seen_ms: now_ms,
                ..member
            },
        );
        self.rebalance(partitions);
        Ok(())
    }

    /// Remove a member and rebalance. Returns false if it was not a member.
    pub fn leave(&mut self, member_id: &str, partitions: u32) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.rebalance(partitions);
        true
    }

    /// Record that a member is alive. Returns whether `last_seen_ms` was written (it is only
    /// refreshed once a third of the session timeout has passed, to keep writes rare).
    pub fn touch(&mut self, member_id: &str, now_ms: i64, force: bool) -> Result<bool, GroupError> {
        let m = self
            .members
            .get_mut(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        let third = i64::try_from(m.session_timeout_ms / 3).unwrap_or(i64::MAX);
        if force || now_ms.saturating_sub(m.last_seen_ms) >= third {
            m.last_seen_ms = now_ms;
            return Ok(true);
        }
        Ok(false)
    }

    /// Check that `member_id` may commit (or read) `partitions` in `generation`.
    pub fn check_owner(
        &self,
        member_id: &str,
        generation: u64,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<(), GroupError> {
        let m = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        if generation != self.generation {
            return Err(GroupError::StaleGeneration {
                given: generation,
                current: self.generation,
            });
        }
        for p in partitions {
            if m.partitions.binary_search(&p).is_err() {
                return Err(GroupError::NotOwner {
                    member: member_id.to_string(),
                    partition: p,
                    generation,
                });
            }
        }
        Ok(())
    }

    /// The fence of an offset commit stored apart from this state (the index checks it in
    /// the transaction that writes the offsets): `member_id` must own `partitions` in
    /// `generation` once members past their session at `now_ms` are expired. Nothing is
    /// changed: expiry is written by the next heartbeat or fetch.
    pub fn check_commit(
        &self,
        member_id: &str,
        generation: u64,
        partitions: impl IntoIterator<Item = u32>,
        now_ms: i64,
        topic_partitions: u32,
    ) -> Result<(), GroupError> {
        let mut after = self.clone();
        let _ = after.expire(now_ms, topic_partitions);
        after.check_owner(member_id, generation, partitions)
    }

    /// Fenced commit: all offsets or none.
    pub fn commit(
        &mut self,
        member_id: &str,
        generation: u64,
        offsets: &[(u32, u64)],
    ) -> Result<(), GroupError> {
        self.check_owner(member_id, generation, offsets.iter().map(|(p, _)| *p))?;
        for (p, o) in offsets {
            let _ = self.offsets.insert(*p, *o);
        }
        Ok(())
    }

    /// Recompute the assignment and bump the generation.
    pub fn rebalance(&mut self, partitions: u32) {
        let current: Vec<(String, Vec<u32>)> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.partitions.clone()))
            .collect();
        let next = sticky_assign(&current, partitions);
        for (id, parts) in next {
            if let Some(m) = self.members.get_mut(&id) {
                m.partitions = parts;
            }
        }
        self.generation += 1;
    }

    /// Verify the invariants; `Err` names the first one broken.
    pub fn check(&self, partitions: u32) -> Result<(), String> {
        if self.members.is_empty() {
            return Ok(());
        }
        let mut seen = BTreeSet::new();
        for (id, m) in &self.members {
            for p in &m.partitions {
                if *p >= partitions || !seen.insert(*p) {
                    return Err(format!("partition {p} owned twice or out of range ({id})"));
                }
            }
        }
        if seen.len() != partitions as usize {
            return Err(format!("{} of {partitions} partitions owned", seen.len()));
        }
        let counts: Vec<usize> = self.members.values().map(|m| m.partitions.len()).collect();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        if max - min > 1 {
            return Err(format!("unbalanced: {min}..{max} partitions per member"));
        }
        Ok(())
    }
}

/// A balanced assignment of `partitions` to members that keeps as many current
/// (member, partition) pairs as balance allows. Members are given in any order; the result
/// is deterministic (it depends on member ids, not on order).
pub fn sticky_assign(
    members: &[(String, Vec<u32>)],
    partitions: u32,
) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let n = members.len();
    let base = partitions as usize / n;
    let extra = partitions as usize % n;
    // Members already holding the most partitions get the `extra` slots: fewer moves.
    let mut order: Vec<&(String, Vec<u32>)> = members.iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let capacity: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), base + usize::from(i < extra)))
        .collect();
    let mut taken = BTreeSet::new();
    let mut sorted: Vec<&(String, Vec<u32>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, cur) in &sorted {
        let cap = capacity.get(id.as_str()).copied().unwrap_or(0);
        let keep: Vec<u32> = cur
            .iter()
            .copied()
            .filter(|p| *p < partitions)
            .filter(|p| taken.insert(*p))
            .take(cap)
            .collect();
        // `take` stops pulling before the filter sees a partition past capacity, so only
        // kept partitions are marked taken.
        let _ = out.insert(id.clone(), keep);
    }
    let mut free = (0..partitions).filter(|p| !taken.contains(p));
    for (id, _) in &sorted {
        let cap = capacity.get(id.as_str()).copied().unwrap_or(0);
        if let Some(parts) = out.get_mut(id.as_str()) {
            while parts.len() < cap {
                match free.next() {
                    Some(p) => parts.push(p),
                    None => break,
                }
            }
            parts.sort_unstable();
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn commit_fence_sees_expiry_without_changing_the_state() {
        let mut g = GroupState::default();
        let m = |seen| Member {
            partitions: Vec::new(),
            last_seen_ms: seen,
            session_timeout_ms: 100,
            auto_commit: false,
        };
        g.join("a", 0, m(0), 2, 10).unwrap();
        g.join("b", 50, m(50), 2, 10).unwrap();
        let a_parts = g.members["a"].partitions.clone();
        let before = g.clone();
        assert_eq!(
            g.check_commit("a", g.generation, a_parts.clone(), 60, 2),
            Ok(())
        );
        assert!(matches!(
            g.check_commit("a", g.generation - 1, a_parts.clone(), 60, 2),
            Err(GroupError::StaleGeneration { .. })
        ));
        let b_parts = g.members["b"].partitions.clone();
        assert!(matches!(
            g.check_commit("a", g.generation, b_parts, 60, 2),
            Err(GroupError::NotOwner { .. })
        ));
        // At 120, "a" (last seen at 0, 100 ms session) is gone.
        assert!(matches!(
            g.check_commit("a", g.generation, a_parts, 120, 2),
            Err(GroupError::UnknownMember(_))
        ));
        assert_eq!(g, before, "the fence changes nothing");
    }

    use super::*;
    use proptest::prelude::*;

    fn member(timeout: u64) -> Member {
        Member {
            partitions: Vec::new(),
            last_seen_ms: 0,
            session_timeout_ms: timeout,
            auto_commit: false,
        }
    }

    #[test]
    fn join_leave_expire_bump_generation_and_stay_balanced() {
        let mut g = GroupState::default();
        g.join("a", 0, member(1000), 6, 10).unwrap();
        assert_eq!(g.members["a"].partitions, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(g.generation, 1);
        g.join("b", 10, member(1000), 6, 10).unwrap();
        g.check(6).unwrap();
        assert_eq!(g.generation, 2);
        // Sticky: a keeps three of its six.
        assert_eq!(g.members["a"].partitions, vec![0, 1, 2]);
        g.join("c", 20, member(100), 6, 10).unwrap();
        g.check(6).unwrap();
        assert!(!g.expire(100, 6));
        assert!(g.expire(1200, 6), "all expired at 1200");
        assert!(g.members.is_empty());
        assert_eq!(g.generation, 4);
        assert_eq!(g.join("d", 0, member(1), 6, 0), Err(GroupError::Full(0)));
    }

    #[test]
    fn commits_are_fenced() {
        let mut g = GroupState::default();
        g.join("a", 0, member(1000), 2, 10).unwrap();
        let gen1 = g.generation;
        g.commit("a", gen1, &[(0, 5), (1, 7)]).unwrap();
        g.join("b", 0, member(1000), 2, 10).unwrap();
        assert_eq!(
            g.commit("a", gen1, &[(0, 6)]),
            Err(GroupError::StaleGeneration {
                given: gen1,
                current: gen1 + 1
            })
        );
        let owned_by_b = g.members["b"].partitions[0];
        assert!(matches!(
            g.commit("a", g.generation, &[(owned_by_b, 9)]),
            Err(GroupError::NotOwner { .. })
        ));
        assert!(matches!(
            g.commit("zz", g.generation, &[(0, 9)]),
            Err(GroupError::UnknownMember(_))
        ));
        assert_eq!(g.offsets[&0], 5, "rejected commits change nothing");
    }

    proptest! {
        #[test]
        fn assignment_is_balanced_complete_and_sticky(
            ids in proptest::collection::btree_set("[a-e]{1,2}", 1..8),
            partitions in 0u32..40,
            leaver in 0usize..8,
        ) {
            let mut g = GroupState::default();
            for id in &ids {
                g.join(id, 0, member(1000), partitions, 100).unwrap();
                g.check(partitions).map_err(TestCaseError::fail)?;
            }
            let before = g.clone();
            let gone = ids.iter().nth(leaver % ids.len()).unwrap().clone();
            let _ = g.leave(&gone, partitions);
            g.check(partitions).map_err(TestCaseError::fail)?;
            // Stickiness: a surviving member loses a partition only if it had more than
            // the new quota allows.
            if !g.members.is_empty() {
                let floor = partitions as usize / g.members.len();
                for (id, m) in &g.members {
                    let old = &before.members[id].partitions;
                    let kept = old.iter().filter(|p| m.partitions.contains(p)).count();
                    prop_assert!(kept >= old.len().min(floor), "{id} kept {kept} of {old:?}");
                }
            }
        }
    }
}
