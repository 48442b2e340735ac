//! The in-memory store: each key's window states behind a per-key lock and its users' buckets in
//! sharded maps, on the process's monotonic clock in nanoseconds. Each replica enforces its
//! limits alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::gcra::{Outcome, Report, Tat};
use super::{decide, Decision, KeyMeta, MAX_KEY_WINDOWS, MAX_WINDOWS};
use crate::policy::Quota;

/// The memory store of one policy generation: a slot per key, by compact index.
pub(super) struct Memory {
    /// Zero of the nanosecond clock; carried over by `rebuild` because kept state refers to it.
    pub(super) epoch: Instant,
    pub(super) keys: Box<[Option<Arc<MemKey>>]>,
}

/// One key's limiters in memory: shared by consecutive generations while its quota is unchanged.
pub(super) struct MemKey {
    pub(super) meta: KeyMeta,
    /// One theoretical arrival time per key window, in `meta.windows` order. A per-key lock, held
    /// for a few dozen instructions; it makes the multi-window decision atomic.
    pub(super) windows: Mutex<[Tat; MAX_KEY_WINDOWS]>,
    pub(super) users: Option<UserBuckets>,
}

/// Per-user buckets of one key: a small fixed set of locked maps, so that requests of different
/// users rarely wait on one another and eviction never stops the whole key. std's SipHash keeps
/// the maps safe from callers who choose user ids to collide; a handful of sharded maps is all
/// that is needed here, so no dashmap dependency.
pub(super) struct UserBuckets {
    shards: Box<[Mutex<HashMap<u64, Tat>>]>,
}

pub(super) const USER_SHARDS: usize = 16;

pub(super) const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Memory {
    /// `keys`: (key id, quota) in policy order; index `i` in this slice is the key's compact
    /// index.
    pub(super) fn new(keys: &[(Arc<str>, Option<Quota>)]) -> Memory {
        Memory {
            epoch: Instant::now(),
            keys: keys
                .iter()
                .map(|(id, quota)| MemKey::new(id, quota.as_ref()?).map(Arc::new))
                .collect(),
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `at` on this store's clock (0 before its epoch).
    pub(super) fn at(&self, at: Instant) -> u64 {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn rebuild(&self, keys: &[(Arc<str>, Option<Quota>)]) -> Memory {
        // foldhash: the ids are the policy's own, and a reload of 10,000 keys hashes each twice.
        let old: HashMap<&str, &Arc<MemKey>, foldhash::fast::RandomState> = self
            .keys
            .iter()
            .flatten()
            .map(|k| (&*k.meta.id, k))
            .collect();
        let keys = keys
            .iter()
            .map(|(id, quota)| {
                let quota = quota.as_ref()?;
                match old.get(&**id) {
                    Some(kept) if kept.meta.quota == *quota => Some(Arc::clone(kept)),
                    _ => MemKey::new(id, quota).map(Arc::new),
                }
            })
            .collect();
        Memory {
            epoch: self.epoch,
            keys,
        }
    }

    pub(super) fn check(&self, key: u32, user: Option<u64>, now: u64) -> Decision {
        let Some(Some(key)) = self.keys.get(key as usize) else {
            debug_assert!((key as usize) < self.keys.len(), "key index out of range");
            return Decision::Unlimited;
        };
        key.check(user, now)
    }

    pub(super) fn evict_idle(&self, now: u64) {
        for key in self.keys.iter().flatten() {
            if let Some(users) = &key.users {
                users.evict(now);
            }
        }
    }

    pub(super) fn user_buckets(&self) -> usize {
        self.keys
            .iter()
            .flatten()
            .filter_map(|k| k.users.as_ref())
            .map(UserBuckets::len)
            .sum()
    }
}

impl MemKey {
    /// `None` when the quota sets no window at all.
    fn new(id: &Arc<str>, quota: &Quota) -> Option<MemKey> {
        let meta = KeyMeta::new(id, quota, NANOS_PER_SEC)?;
        let users = meta.user.as_ref().map(|_| UserBuckets::new());
        Some(MemKey {
            meta,
            windows: Mutex::new([Tat::default(); MAX_KEY_WINDOWS]),
            users,
        })
    }

    fn check(&self, user: Option<u64>, now: u64) -> Decision {
        let meta = &self.meta;
        let mut outcomes = [Outcome::default(); MAX_WINDOWS];
        let mut reports = [Report::default(); MAX_WINDOWS];
        let mut all = true;
        let mut n = 0;

        let mut tats = lock(&self.windows);
        for (window, tat) in meta.windows.iter().zip(tats.iter()) {
            let outcome = window.check(*tat, now);
            all &= outcome.allowed;
            outcomes[n] = outcome;
            reports[n] = window.report(&outcome, Duration::from_nanos);
            n += 1;
        }
        // Lock order: key, then shard. evict() takes shard locks only, so no cycle.
        if let (Some(window), Some(users), Some(user)) = (&meta.user, &self.users, user) {
            let mut shard = lock(users.shard(user));
            let tat = shard.get(&user).copied().unwrap_or_default();
            let outcome = window.check(tat, now);
            all &= outcome.allowed;
            reports[n] = window.report(&outcome, Duration::from_nanos);
            n += 1;
            if all {
                shard.insert(user, outcome.next);
            }
        }
        if all {
            for (tat, outcome) in tats.iter_mut().zip(&outcomes[..meta.windows.len()]) {
                *tat = outcome.next;
            }
        }
        drop(tats);
        decide(&meta.policy, &reports[..n])
    }
}

impl UserBuckets {
    fn new() -> UserBuckets {
        UserBuckets {
            shards: (0..USER_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    pub(super) fn shard(&self, user: u64) -> &Mutex<HashMap<u64, Tat>> {
        // Fibonacci hashing spreads sequential ids; the map inside still uses SipHash.
        let i = (user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize;
        &self.shards[i % self.shards.len()]
    }

    fn evict(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            map.retain(|_, tat| !tat.is_full_at(now));
            // retain() keeps the table; give it back once it is mostly empty, or 100,000 users
            // seen once would pin their memory forever.
            if map.capacity() > 64 && map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity()).sum()
    }
}

/// Nothing panics while these locks are held, but if something ever did, the state inside is
/// still a valid set of arrival times: keep going rather than fail every later request.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
