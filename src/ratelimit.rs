//! Placeholder until the rate-limit module lands.
use std::num::NonZeroU32;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub per_second: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
    pub per_minute: Option<NonZeroU32>,
    pub per_hour: Option<NonZeroU32>,
    pub per_day: Option<NonZeroU32>,
    pub per_user_per_second: Option<NonZeroU32>,
}

pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}
