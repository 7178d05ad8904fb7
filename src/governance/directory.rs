//! The registry as the request path sees it: a short-lived in-memory copy of each client's
//! record, so that a request costs no database round trip, and development auto-registration.
//!
//! A change made through this server (admin API) takes effect at once; a change made elsewhere
//! (another replica, the CLI) within `governance.cache_seconds`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::registry::{self, Actor, Client, ClientInput, RegistryError};
use crate::access::Caller;

pub struct Directory {
    pool: PgPool,
    ttl: Duration,
    /// Register unknown clients on first use: development and demo only (refused by the
    /// configuration check when the development issuer is off).
    auto_register: bool,
    /// Registered clients by id, with when they were read.
    cache: RwLock<HashMap<String, (Instant, Arc<Client>)>>,
}

/// Limits for clients registered automatically in development: effectively none, so tests,
/// the demo and `scripts/bench.sh` (which measures the server, not the throttle) are not
/// throttled unless they register a client with tighter limits.
fn development_client(client_id: &str, caller: &Caller) -> ClientInput {
    let user = matches!(caller.principal, crate::access::Principal::User(_));
    ClientInput {
        client_id: Some(client_id.to_string()),
        ods_code: Some(caller.org().to_string()),
        name: Some(format!(
            "{client_id} (registered automatically in development)"
        )),
        owner: Some("development".into()),
        access_mode: Some(if user { "user" } else { "application" }.into()),
        topics: Some(vec!["*".into()]),
        payloads: Some(
            registry::PAYLOADS
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
        ),
        rate_per_second: Some(1_000_000.0),
        burst: Some(1_000_000),
        max_concurrent: Some(100_000),
        ..ClientInput::default()
    }
}

impl Directory {
    pub fn new(pool: PgPool, ttl: Duration, auto_register: bool) -> Directory {
        Directory {
            pool,
            ttl,
            auto_register,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn auto_register(&self) -> bool {
        self.auto_register
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The registered client behind a request (`None`: not registered).
    pub async fn lookup(
        &self,
        client_id: &str,
        caller: &Caller,
    ) -> Result<Option<Arc<Client>>, RegistryError> {
        if let Some((at, client)) = self.cache.read().expect("cache lock").get(client_id)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(client.clone()));
        }
        let mut found = registry::get(&self.pool, client_id).await?;
        if found.is_none() && self.auto_register {
            let actor = Actor::named("shcr (development auto-registration)");
            registry::ensure(&self.pool, &development_client(client_id, caller), &actor).await?;
            found = registry::get(&self.pool, client_id).await?;
        }
        let found = found.map(Arc::new);
        // Only registered clients are cached: a client onboarded a moment ago (CLI, another
        // replica) must be let in at once, and a signed token naming an unknown client is rare.
        if let Some(client) = &found {
            self.cache
                .write()
                .expect("cache lock")
                .insert(client_id.to_string(), (Instant::now(), client.clone()));
        }
        Ok(found)
    }

    /// Forgets the cached record after a change made through this server.
    pub fn invalidate(&self, client_id: &str) {
        self.cache.write().expect("cache lock").remove(client_id);
    }

    /// The cached record, if any, without a database round trip (for the payload policy,
    /// which runs where no await is possible).
    pub fn cached(&self, client_id: &str) -> Option<Arc<Client>> {
        self.cache
            .read()
            .expect("cache lock")
            .get(client_id)
            .map(|(_, c)| c.clone())
    }
}
