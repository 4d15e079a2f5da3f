//! Google's token signing keys, fetched from a JWKS endpoint and cached.
//!
//! What the cache promises, because a verifier that cannot get keys refuses every push, and
//! Pub/Sub then dead-letters all traffic:
//! - **one fetch at a time**: concurrent requests that miss wait for the fetch in flight and
//!   re-check what it brought, instead of each fetching;
//! - **`Cache-Control: max-age` is honoured** (Google's endpoint sends it; keys rotate with
//!   overlap, so a cached set stays valid for that long), [`Policy::default_ttl`] without it;
//! - **the last good keys are kept while refreshes fail**, for [`Policy::max_stale`] past
//!   their expiry, so an outage of the key endpoint does not refuse valid tokens;
//! - **failed fetches are backed off** (doubling from [`Policy::backoff_first`]), so an
//!   outage is not hammered by every request;
//! - **an unknown key id refetches** (a rotation), at most every [`Policy::refetch_min`], so
//!   forged key ids cannot make it fetch on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;

/// The cache's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long keys are fresh when the answer has no max-age.
    pub default_ttl: Duration,
    /// How long past their freshness the last good keys still verify while refreshes fail.
    pub max_stale: Duration,
    /// Least time between two fetches caused by an unknown key id.
    pub refetch_min: Duration,
    /// Wait after the first failed fetch before the next; doubles with each failure...
    pub backoff_first: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// Longest a fetch may take.
    pub timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            default_ttl: Duration::from_secs(3600),
            max_stale: Duration::from_secs(6 * 3600),
            refetch_min: Duration::from_secs(30),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key with that id is published: the token is not Google's (or not yet known).
    #[error("the token is signed with an unknown key {0:?}")]
    Unknown(String),
    /// The keys cannot be had now: the caller should answer "retry later".
    #[error("the signing keys are unavailable: {0}")]
    Unavailable(String),
}

/// What an RS256 token must have been issued for, besides a good signature.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// Its `aud`.
    pub audience: &'a str,
    /// One of these is its `iss`.
    pub issuers: &'a [&'a str],
    /// Clock skew allowed on `exp` (and `nbf`, `iat` where checked), in seconds.
    pub leeway_s: u64,
}

/// Why a signed token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this service accepts: malformed, another algorithm, a bad signature,
    /// another issuer or audience, expired.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The keys of one JWKS endpoint; cheap to clone, shared.
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    http: reqwest::Client,
    policy: Policy,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    /// Until when the keys are fresh (none: never fetched).
    fresh_until: Option<Instant>,
    /// When the last fetch (good or bad) ended, and how many have failed in a row.
    last_fetch: Option<Instant>,
    failures: u32,
    /// Counts finished fetches, so a waiter can tell that one ended while it waited.
    generation: u64,
    last_error: Option<String>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// What a look-up found in the cache.
enum Found {
    Key(DecodingKey),
    /// Fetch, then look again.
    Fetch,
    Refuse(KeyError),
}

impl State {
    fn fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|t| now < t)
    }

    fn usable_stale(&self, now: Instant, policy: &Policy) -> bool {
        self.fresh_until.is_some_and(|t| now < t + policy.max_stale)
    }

    fn backing_off(&self, now: Instant, policy: &Policy) -> bool {
        if self.failures == 0 {
            return false;
        }
        let exponent = self.failures.saturating_sub(1).min(16);
        let wait = policy
            .backoff_first
            .saturating_mul(1 << exponent)
            .min(policy.backoff_max);
        self.last_fetch.is_some_and(|t| now < t + wait)
    }

    /// What to do for `kid` now; `fetched_since_asked`: a fetch ended since the caller first
    /// looked, so it must not fetch again for the same reason.
    fn look_up(
        &self,
        kid: &str,
        now: Instant,
        policy: &Policy,
        fetched_since_asked: bool,
    ) -> Found {
        let key = self.keys.get(kid);
        if let Some(key) = key
            && self.fresh(now)
        {
            return Found::Key(key.clone());
        }
        let may_fetch = !fetched_since_asked && !self.backing_off(now, policy);
        if self.fresh(now) {
            // Fresh keys, but not this one: a rotation, or a forged id.
            let recently = self
                .last_fetch
                .is_some_and(|t| now < t + policy.refetch_min);
            return if may_fetch && !recently {
                Found::Fetch
            } else {
                Found::Refuse(KeyError::Unknown(kid.to_owned()))
            };
        }
        if may_fetch {
            return Found::Fetch;
        }
        // Expired, and fetching failed (or is backing off): the last good keys still serve.
        match key {
            Some(key) if self.usable_stale(now, policy) => Found::Key(key.clone()),
            _ if self.usable_stale(now, policy) => Found::Refuse(KeyError::Unknown(kid.to_owned())),
            _ => Found::Refuse(KeyError::Unavailable(
                self.last_error
                    .clone()
                    .unwrap_or_else(|| "no keys fetched yet".into()),
            )),
        }
    }
}

impl KeyCache {
    pub fn new(url: impl Into<String>, policy: Policy) -> KeyCache {
        KeyCache {
            inner: Arc::new(Inner {
                url: url.into(),
                http: reqwest::Client::builder()
                    .timeout(policy.timeout)
                    .build()
                    .unwrap_or_default(),
                policy,
                state: Mutex::new(State::default()),
                fetching: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data, consistent after any panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key `kid`, from the cache or fetched.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, KeyError> {
        let policy = self.inner.policy;
        let asked_at = self.state().generation;
        loop {
            let found = {
                let state = self.state();
                state.look_up(kid, Instant::now(), &policy, state.generation != asked_at)
            };
            match found {
                Found::Key(key) => return Ok(key),
                Found::Refuse(error) => return Err(error),
                Found::Fetch => {}
            }
            let _one_at_a_time = self.inner.fetching.lock().await;
            // Whoever held the lock before may have fetched what this caller needs.
            if self.state().generation != asked_at {
                continue;
            }
            self.fetch().await;
        }
    }

    /// Verifies `token` as an RS256 JWT signed with one of these keys (the one its `kid`
    /// names), issued by one of `expected.issuers` for `expected.audience`, and unexpired;
    /// its claims. The one check of a signature for push authentication and for users' ID
    /// tokens: `alg` is pinned to RS256 (never the token's say), and `exp`, `iss` and `aud`
    /// must be present.
    pub async fn verify_rs256<C: DeserializeOwned>(
        &self,
        token: &str,
        expected: Expected<'_>,
    ) -> Result<C, TokenError> {
        let invalid = |e: jsonwebtoken::errors::Error| TokenError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(format!("algorithm {:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no key id".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[expected.audience]);
        validation.set_issuer(expected.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = expected.leeway_s;
        jsonwebtoken::decode::<C>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(invalid)
    }

    async fn fetch(&self) {
        let result = self.download().await;
        let now = Instant::now();
        let mut state = self.state();
        state.generation += 1;
        state.last_fetch = Some(now);
        match result {
            Ok((keys, ttl)) => {
                state.keys = keys;
                state.fresh_until = Some(now + ttl);
                state.failures = 0;
                state.last_error = None;
            }
            Err(error) => {
                tracing::warn!(url = %self.inner.url, %error, failures = state.failures + 1, "signing keys not fetched");
                state.failures = state.failures.saturating_add(1);
                state.last_error = Some(error);
            }
        }
    }

    async fn download(&self) -> Result<(HashMap<String, DecodingKey>, Duration), String> {
        let response = self
            .inner
            .http
            .get(&self.inner.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching {}: {e}", self.inner.url))?;
        let ttl = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(self.inner.policy.default_ttl);
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| format!("reading {}: {e}", self.inner.url))?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let id = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (id, key))
            })
            .collect();
        if keys.is_empty() {
            return Err(format!("{} published no usable key", self.inner.url));
        }
        Ok((keys, ttl))
    }
}

/// The `max-age` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{KEY_1, KEY_2, KeyServer};

    fn policy() -> Policy {
        Policy {
            default_ttl: Duration::from_secs(3600),
            max_stale: Duration::from_secs(3),
            refetch_min: Duration::from_millis(200),
            backoff_first: Duration::from_millis(500),
            backoff_max: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=19379, must-revalidate, no-transform"),
            Some(Duration::from_secs(19379))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("Max-Age=5"), Some(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn many_requests_that_miss_at_once_cause_one_fetch() {
        let server = KeyServer::start(&[KEY_1]).await;
        server.set_delay(Duration::from_millis(300));
        let cache = KeyCache::new(&server.url, policy());
        let lookups = (0..20).map(|_| {
            let cache = cache.clone();
            async move { cache.key(KEY_1.kid).await }
        });
        let keys = futures::future::join_all(lookups).await;
        assert!(keys.iter().all(Result::is_ok));
        assert_eq!(server.fetches(), 1, "one fetch for twenty waiters");
    }

    #[tokio::test]
    async fn max_age_is_honoured() {
        let server = KeyServer::start(&[KEY_1]).await;
        server.set_max_age(Some(1));
        let cache = KeyCache::new(&server.url, policy());
        cache.key(KEY_1.kid).await.unwrap();
        cache.key(KEY_1.kid).await.unwrap();
        assert_eq!(server.fetches(), 1, "fresh for a second");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        cache.key(KEY_1.kid).await.unwrap();
        assert_eq!(server.fetches(), 2, "refetched once expired");
    }

    #[tokio::test]
    async fn while_the_endpoint_is_down_the_last_good_keys_serve_for_a_bounded_time_and_fetches_back_off()
     {
        let server = KeyServer::start(&[KEY_1]).await;
        server.set_max_age(Some(1));
        let cache = KeyCache::new(&server.url, policy());
        cache.key(KEY_1.kid).await.unwrap();
        server.set_down(true);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired: one refresh is tried and fails, the last good keys still verify...
        for _ in 0..10 {
            assert!(cache.key(KEY_1.kid).await.is_ok());
        }
        // ...and the failed fetch is backed off, not repeated by every request.
        assert_eq!(server.fetches(), 2);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(cache.key(KEY_1.kid).await.is_ok());
        assert_eq!(server.fetches(), 3, "one retry once the backoff is over");
        // Past max_stale, nothing verifies: retry later, not "forged".
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(matches!(
            cache.key(KEY_1.kid).await,
            Err(KeyError::Unavailable(_))
        ));
        // Back up: fresh keys again.
        server.set_down(false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(cache.key(KEY_1.kid).await.is_ok());
    }

    #[tokio::test]
    async fn a_rotation_is_picked_up_and_a_forged_key_id_does_not_refetch_on_every_request() {
        let server = KeyServer::start(&[KEY_1]).await;
        let cache = KeyCache::new(&server.url, policy());
        cache.key(KEY_1.kid).await.unwrap();
        server.set_keys(&[KEY_1, KEY_2]);
        // Too soon after the last fetch: an unknown id is refused without a fetch.
        assert_eq!(
            cache.key(KEY_2.kid).await.err(),
            Some(KeyError::Unknown(KEY_2.kid.into()))
        );
        assert_eq!(server.fetches(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.key(KEY_2.kid).await.is_ok(), "the new key is fetched");
        assert_eq!(server.fetches(), 2);
        for _ in 0..10 {
            assert!(cache.key("forged").await.is_err());
        }
        assert_eq!(server.fetches(), 2, "forged ids are refused from the cache");
    }

    #[tokio::test]
    async fn no_keys_ever_fetched_is_unavailable_not_unknown() {
        let cache = KeyCache::new("http://127.0.0.1:9/certs", policy());
        assert!(matches!(
            cache.key(KEY_1.kid).await,
            Err(KeyError::Unavailable(_))
        ));
    }
}
