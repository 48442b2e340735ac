//! One policy generation and everything built from it: the upstream client, the lookup caches,
//! the rule options and the rate limiters. Swapped whole on reload.

use crate::policy::{self, Policy};
use crate::proxy::lookup::Lookups;
use crate::upstream::{self, HttpClient};
use crate::{ratelimit, rules};

/// One policy generation with everything built from it. Swapped whole on reload, so a request
/// sees one consistent generation through a single atomic load.
pub struct Runtime {
    pub policy: Policy,
    pub client: HttpClient,
    /// Dialog and session caches; kept across generations with the same TTL.
    pub lookups: Lookups,
    /// Options the dialog rules read, built once per generation.
    pub rule_options: rules::RuleOptions,
    /// Rate limiters; unchanged keys keep their state across generations.
    pub limiters: ratelimit::Limiters,
    /// Trace propagation and span export; kept across generations with the same `tracing`.
    pub tracer: crate::trace::Tracer,
}

impl Runtime {
    /// Build a generation. `previous` lends its connection pool when the upstream is unchanged.
    pub async fn new(policy: Policy, previous: Option<&Runtime>) -> Result<Runtime, String> {
        let client = match previous {
            Some(old) if same_upstream(old, &policy) => old.client.clone(),
            _ => upstream::client(&policy.upstream)?,
        };
        let ttl = policy.dialog_rules.cache_ttl;
        let lookups = match previous {
            Some(old) if old.lookups.ttl() == ttl => old.lookups.clone(),
            _ => Lookups::new(ttl),
        };
        let keys: Vec<_> = policy
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.quota.clone()))
            .collect();
        let limiters = match previous {
            Some(old) if old.policy.rate_limit == policy.rate_limit => old.limiters.rebuild(&keys),
            _ => match &policy.rate_limit {
                policy::RateLimitStore::Memory => ratelimit::Limiters::memory(&keys),
                policy::RateLimitStore::Redis(store) => ratelimit::Limiters::redis(store, &keys)
                    .await
                    .map_err(|e| e.to_string())?,
            },
        };
        let tracer = match previous {
            Some(old) if old.policy.tracing == policy.tracing => old.tracer.clone(),
            _ => crate::trace::Tracer::new(&policy.tracing, &|name| std::env::var(name).ok()),
        };
        let rule_options = rules::RuleOptions {
            allow_fields: policy.dialog_rules.allow_fields.clone(),
        };
        Ok(Runtime {
            policy,
            client,
            lookups,
            rule_options,
            limiters,
            tracer,
        })
    }
}

fn same_upstream(old: &Runtime, b: &Policy) -> bool {
    let a = &old.policy;
    a.upstream.connect_timeout == b.upstream.connect_timeout
        && a.upstream.extra_ca_file == b.upstream.extra_ca_file
        && upstream::serves(&old.client, &b.upstream)
}
