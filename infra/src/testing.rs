//! Test support (the `testing` feature): a local stand-in for Google's key endpoint that can
//! go down, answer slowly and rotate its keys, and ID tokens signed with its test keys.
//!
//! One fixture for every test that needs Google-signed tokens: the push-auth tests, the
//! Cloud Run front-end stand-in, and the key cache's own tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A test signing key: its private PEM and its public JWK (as Google publishes its keys).
#[derive(Clone, Copy, Debug)]
pub struct TestKey {
    pub kid: &'static str,
    pub pem: &'static [u8],
    pub jwk: &'static str,
}

pub const KEY_1: TestKey = TestKey {
    kid: "test-key-1",
    pem: include_bytes!("../tests/fixtures/keys/key-1.pem"),
    jwk: include_str!("../tests/fixtures/keys/key-1.jwk.json"),
};

pub const KEY_2: TestKey = TestKey {
    kid: "test-key-2",
    pem: include_bytes!("../tests/fixtures/keys/key-2.pem"),
    jwk: include_str!("../tests/fixtures/keys/key-2.jwk.json"),
};

/// The push identity the tests' Terraform-like configuration names.
pub const PUSHER: &str = "saga-push@shop.iam.gserviceaccount.com";

impl TestKey {
    /// A JWT signed with this key (RS256, `kid` in the header).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_claiming(self.kid, claims)
    }

    /// A JWT signed with this key whose header names key `kid` (a forgery, if it is another's).
    pub fn sign_claiming(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_rsa_pem(self.pem).expect("a test key is a valid RSA PEM");
        jsonwebtoken::encode(&header, claims, &key).expect("signing a test token")
    }
}

/// The claims of a Google-signed OIDC token for `email` and `audience`, as Pub/Sub push and
/// Cloud Scheduler send them, expiring `expires_in_s` from now (negative: already expired).
pub fn google_claims(audience: &str, email: &str, expires_in_s: i64) -> serde_json::Value {
    let now = jiff::Timestamp::now().as_second();
    serde_json::json!({
        "iss": "https://accounts.google.com", "aud": audience, "azp": "1234567890",
        "email": email, "email_verified": true, "sub": "1234567890",
        "iat": now, "exp": now + expires_in_s,
    })
}

/// `token` with its signature replaced as Cloud Run's front end replaces it after checking it
/// (or as an attacker would who never passed that check).
pub fn strip_signature(token: &str) -> String {
    match token.rsplit_once('.') {
        Some((message, _)) => format!("{message}.{}", crate::push_auth::SIGNATURE_REMOVED),
        None => token.to_owned(),
    }
}

/// How the key server behaves now.
struct Behaviour {
    keys: Vec<TestKey>,
    down: bool,
    delay: Duration,
    max_age: Option<u64>,
}

/// A local JWKS endpoint with switches: down (503), slow, and its key set.
#[derive(Clone)]
pub struct KeyServer {
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    /// Serves `keys` on a free local port, with `Cache-Control: max-age=3600` by default.
    pub async fn start(keys: &[TestKey]) -> KeyServer {
        let server = KeyServer {
            url: String::new(),
            behaviour: Arc::new(Mutex::new(Behaviour {
                keys: keys.to_vec(),
                down: false,
                delay: Duration::ZERO,
                max_age: Some(3600),
            })),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/certs", get(serve))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the key server");
        let addr = listener.local_addr().expect("the key server's address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        KeyServer {
            url: format!("http://{addr}/certs"),
            ..server
        }
    }

    fn with(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().expect("key server state"));
    }

    /// Answers 503 to every fetch while `down`.
    pub fn set_down(&self, down: bool) {
        self.with(|b| b.down = down);
    }

    /// Waits this long before each answer.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|b| b.delay = delay);
    }

    /// The `Cache-Control: max-age` of its answers (`None`: no header).
    pub fn set_max_age(&self, seconds: Option<u64>) {
        self.with(|b| b.max_age = seconds);
    }

    /// Publishes these keys from now on (a rotation).
    pub fn set_keys(&self, keys: &[TestKey]) {
        self.with(|b| b.keys = keys.to_vec());
    }

    /// How many fetches it has answered or refused.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn serve(State(server): State<KeyServer>) -> Response {
    server.fetches.fetch_add(1, Ordering::SeqCst);
    let (delay, down, max_age, keys) = {
        let b = server.behaviour.lock().expect("key server state");
        (b.delay, b.down, b.max_age, b.keys.clone())
    };
    tokio::time::sleep(delay).await;
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::from_str(k.jwk).expect("a test JWK is JSON"))
        .collect();
    let mut response = axum::Json(serde_json::json!({ "keys": keys })).into_response();
    if let Some(age) = max_age
        && let Ok(value) = HeaderValue::from_str(&format!("public, max-age={age}"))
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// An order for `quantity` widgets by jack, moved to `status` the legal way (for the steps'
/// unit tests: a status is only ever set through `OrderDoc::advance`).
pub fn order_at(status: crate::events::OrderStatus, quantity: u32) -> crate::order::OrderDoc {
    use crate::events::{FailureReason, OrderDetails, OrderStatus};
    let details = OrderDetails {
        item: "widget".into(),
        quantity,
        user: "jack".into(),
        payment_error: false,
    };
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut order = crate::order::OrderDoc::new(uuid::Uuid::new_v4(), &details, now);
    let path: &[OrderStatus] = match status {
        OrderStatus::Pending => &[],
        OrderStatus::OrderCreated => &[OrderStatus::OrderCreated],
        OrderStatus::InventoryReserved => {
            &[OrderStatus::OrderCreated, OrderStatus::InventoryReserved]
        }
        OrderStatus::Completed => &[
            OrderStatus::OrderCreated,
            OrderStatus::InventoryReserved,
            OrderStatus::Completed,
        ],
        OrderStatus::Failed | OrderStatus::Compensated => &[],
    };
    for step in path {
        order.advance(*step, now).expect("a legal path");
    }
    if matches!(status, OrderStatus::Failed | OrderStatus::Compensated) {
        order
            .fail(FailureReason::Timeout, now)
            .expect("a legal path");
    }
    if status == OrderStatus::Compensated {
        order
            .compensate(FailureReason::Timeout, now)
            .expect("a legal path");
    }
    order
}

/// An order document no build can read (its quantity is not a number), but which the sweeps'
/// query matches: `status` and a real timestamp `updated_at`. A bad write, or one by a
/// future build, that a sweep must step over.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct UnreadableOrder {
    pub status: crate::events::OrderStatus,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: jiff::Timestamp,
    pub quantity: String,
}

impl UnreadableOrder {
    pub fn pending_since(updated_at: jiff::Timestamp) -> UnreadableOrder {
        UnreadableOrder {
            status: crate::events::OrderStatus::Pending,
            updated_at,
            quantity: "many".into(),
        }
    }
}
