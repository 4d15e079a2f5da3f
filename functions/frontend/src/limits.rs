//! Limits that hold under abuse: a per-client rate on `POST /order` (a token bucket per
//! client, in each instance), and a cap on the live streams an instance holds open.
//!
//! Cloud Run gives an instance 80 concurrent requests by default; a client that held them all
//! with idle streams, or that placed orders as fast as it could, would stop everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket per client: `burst` orders at once, then `rate` a second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle ones are forgotten (a full bucket is the same as none).
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one order from `client`'s bucket; `Err(wait)` if it is empty, with how long until
    /// it holds one again.
    pub fn take(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst).tokens < burst);
        }
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *bucket = bucket.refilled(now, self.rate, self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64, burst: f64) -> Bucket {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket {
            tokens: (self.tokens + elapsed * rate).min(burst),
            at: now,
        }
    }
}

/// Who a request comes from, for its rate: the signed-in user, else its address. On Cloud
/// Run (`trust_forwarded`) the address is the last entry of `X-Forwarded-For`, the one
/// Google's front end appended (a client can send the header, but only prepend to it);
/// elsewhere it is the peer.
pub fn client_key(
    user: Option<&str>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    trust_forwarded: bool,
) -> String {
    if let Some(user) = user {
        return format!("user:{user}");
    }
    let forwarded = trust_forwarded
        .then(|| {
            headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|ip| !ip.is_empty())
                .map(str::to_owned)
        })
        .flatten();
    match (forwarded, peer) {
        (Some(ip), _) => format!("ip:{ip}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "ip:unknown".into(),
    }
}

/// The address a request came from, when the server knows it (it serves with connect info).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// The live streams an instance holds open, at most `max`.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    slots: Arc<Semaphore>,
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            slots: Arc::new(Semaphore::new(max)),
        }
    }

    /// A slot for one more stream, held until the stream ends; `None` if all are taken.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_burst_of_orders_then_the_bucket_empties_and_refills_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("jack", t0).is_ok());
        }
        let wait = limiter.take("jack", t0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(500),
            "one token every half second"
        );
        // Another client has its own bucket.
        assert!(limiter.take("jill", t0).is_ok());
        // Half a second later, one more.
        assert!(
            limiter
                .take("jack", t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .take("jack", t0 + Duration::from_millis(500))
                .is_err()
        );
        // Long idle, never more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.take("jack", later).is_ok());
        }
        assert!(limiter.take("jack", later).is_err());
    }

    #[test]
    fn the_client_is_the_user_else_the_address_the_platform_saw() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            client_key(Some("uid-1"), &headers, peer, true),
            "user:uid-1"
        );
        assert_eq!(client_key(None, &headers, peer, true), "ip:203.0.113.7");
        assert_eq!(
            client_key(None, &headers, peer, false),
            "ip:10.0.0.1",
            "a forwarded header is not trusted where no front end sets it"
        );
    }

    #[test]
    fn streams_past_the_cap_get_no_slot_until_one_ends() {
        let slots = StreamSlots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
    }
}
