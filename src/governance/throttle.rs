//! Per-client throttling from the registry: a token bucket for rate (governor's GCRA, which
//! behaves as a token bucket of `burst` tokens refilled at `rate_per_second`) and a cap on
//! requests in flight.
//!
//! Both are checked before the request reaches a handler, so a refused request has started
//! nothing: a write is either refused here with 429 or runs to its commit. Nothing that was
//! acknowledged can be dropped by a limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::registry::Client;

/// Why a request was throttled, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub enum Throttled {
    /// The bucket is empty: enough tokens for this request return after `retry_after`.
    Rate { retry_after: Duration, cost: u32 },
    /// `max_concurrent` requests are already in flight.
    Concurrency { limit: i32 },
}

impl Throttled {
    /// Whole seconds for `Retry-After` (at least 1: 0 invites a busy loop).
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Throttled::Rate { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            Throttled::Concurrency { .. } => 1,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Throttled::Rate { .. } => "rate",
            Throttled::Concurrency { .. } => "concurrency",
        }
    }
}

struct Bucket {
    /// The limits the bucket was built with: a registry change rebuilds it.
    limits: (u64, i32, i32),
    rate: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
}

impl Bucket {
    fn new(client: &Client) -> Bucket {
        let period = Duration::from_secs_f64(1.0 / client.rate_per_second.max(0.001));
        let burst = NonZeroU32::new(client.burst.max(1) as u32).expect("at least 1");
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Bucket {
            limits: limits(client),
            rate: RateLimiter::direct(quota),
            in_flight: Arc::new(Semaphore::new(client.max_concurrent.max(1) as usize)),
        }
    }
}

fn limits(client: &Client) -> (u64, i32, i32) {
    (
        client.rate_per_second.to_bits(),
        client.burst,
        client.max_concurrent,
    )
}

/// Held while a request runs; dropping it frees the client's concurrency slot.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

impl Throttle {
    fn bucket(&self, client: &Client) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().expect("throttle lock");
        match buckets.get(&client.client_id) {
            Some(b) if b.limits == limits(client) => b.clone(),
            _ => {
                let b = Arc::new(Bucket::new(client));
                buckets.insert(client.client_id.clone(), b.clone());
                b
            }
        }
    }

    /// Admits a request costing `cost` tokens, or says why not. A cost above the bucket size
    /// is charged as a full bucket, so an expensive request is slow, never impossible.
    pub fn admit(&self, client: &Client, cost: u32) -> Result<Admission, Throttled> {
        let bucket = self.bucket(client);
        let permit =
            bucket
                .in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| Throttled::Concurrency {
                    limit: client.max_concurrent,
                })?;
        let cost = cost.clamp(1, client.burst.max(1) as u32);
        let n = NonZeroU32::new(cost).expect("at least 1");
        match bucket.rate.check_n(n) {
            Ok(Ok(())) => Ok(Admission { _permit: permit }),
            Ok(Err(not_until)) => Err(Throttled::Rate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                cost,
            }),
            // Unreachable after the clamp; treat as a full bucket.
            Err(_) => Err(Throttled::Rate {
                retry_after: Duration::from_secs(1),
                cost,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::registry::ClientInput;

    fn client(rate: f64, burst: i32, concurrent: i32) -> Client {
        Client::from_input(&ClientInput {
            client_id: Some("c".into()),
            ods_code: Some("RX1".into()),
            name: Some("c".into()),
            access_mode: Some("application".into()),
            rate_per_second: Some(rate),
            burst: Some(burst),
            max_concurrent: Some(concurrent),
            ..ClientInput::default()
        })
        .unwrap()
    }

    #[test]
    fn an_empty_bucket_refuses_with_a_retry_time() {
        let t = Throttle::default();
        let c = client(1.0, 2, 10);
        assert!(t.admit(&c, 1).is_ok());
        assert!(t.admit(&c, 1).is_ok());
        let refused = t.admit(&c, 1).err().expect("third request throttled");
        assert!(matches!(refused, Throttled::Rate { .. }));
        assert_eq!(refused.retry_after_seconds(), 1);
    }

    #[test]
    fn heavy_requests_drain_the_bucket_faster() {
        let t = Throttle::default();
        let c = client(0.5, 10, 10);
        assert!(t.admit(&c, 10).is_ok());
        let refused = t.admit(&c, 10).err().expect("throttled");
        assert!(refused.retry_after_seconds() >= 19, "{refused:?}");
    }

    #[test]
    fn requests_in_flight_are_capped() {
        let t = Throttle::default();
        let c = client(100.0, 100, 1);
        let first = t.admit(&c, 1).expect("first admitted");
        assert!(matches!(
            t.admit(&c, 1).err(),
            Some(Throttled::Concurrency { .. })
        ));
        drop(first);
        assert!(t.admit(&c, 1).is_ok());
    }

    #[test]
    fn a_registry_change_rebuilds_the_bucket() {
        let t = Throttle::default();
        let c = client(1.0, 1, 10);
        assert!(t.admit(&c, 1).is_ok());
        assert!(t.admit(&c, 1).is_err());
        let wider = client(1.0, 5, 10);
        assert!(t.admit(&wider, 1).is_ok());
    }
}
