//! Push authentication: Pub/Sub signs each push with a Google OIDC token for the push service
//! account. A function configured with [`OidcSettings`] accepts a push only if the
//! `Authorization: Bearer` token is signed by Google (keys from the JWKS endpoint, cached),
//! issued by Google, for this service (audience), unexpired, and for the expected push
//! service account with a verified email. Anything else: 401 (no or bad token) or 403 (a
//! valid token for someone else), logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::RwLock;

pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id triggers a refetch at most this often (so forged ids cannot flood Google).
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// What a push token must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    /// The audience the subscription puts in its tokens: the service's URL.
    pub audience: String,
    /// The push service account's email.
    pub service_account: String,
    /// Where Google's signing keys are published.
    pub jwks_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization: Bearer token")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token is signed with an unknown key {0:?}")]
    UnknownKey(Option<String>),
    #[error("the token is for {got:?}, not the push service account")]
    WrongAccount { got: Option<String> },
    #[error("the token's email is not verified")]
    Unverified,
    #[error("Google's signing keys could not be fetched: {0}")]
    Keys(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) | AuthError::UnknownKey(_) => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::WrongAccount { .. } | AuthError::Unverified => StatusCode::FORBIDDEN,
            // Our problem, not the caller's: Pub/Sub retries.
            AuthError::Keys(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::warn!(error = %self, %status, "push refused");
        let body = serde_json::json!({"error": self.to_string(), "field": "Authorization"});
        (status, Json(body)).into_response()
    }
}

#[derive(Debug, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
}

struct Keys {
    by_id: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Verifies push tokens; cheap to clone, keys shared.
#[derive(Clone)]
pub struct OidcVerifier {
    settings: Arc<OidcSettings>,
    http: reqwest::Client,
    keys: Arc<RwLock<Keys>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings) -> OidcVerifier {
        OidcVerifier {
            settings: Arc::new(settings),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: Arc::new(RwLock::new(Keys {
                by_id: HashMap::new(),
                fetched_at: None,
            })),
        }
    }

    /// Checks the `Authorization` header value of a push.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid(format!("algorithm {:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey(None))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&GOOGLE_ISSUERS);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if claims.email.as_deref() != Some(self.settings.service_account.as_str()) {
            return Err(AuthError::WrongAccount { got: claims.email });
        }
        if !claims.email_verified {
            return Err(AuthError::Unverified);
        }
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys.fetched_at.is_some_and(|t| t.elapsed() < KEYS_TTL);
            if let Some(key) = keys.by_id.get(kid).filter(|_| fresh) {
                return Ok(key.clone());
            }
            let recently = keys
                .fetched_at
                .is_some_and(|t| t.elapsed() < REFETCH_MIN_INTERVAL);
            if recently && fresh {
                return Err(AuthError::UnknownKey(Some(kid.to_owned())));
            }
        }
        let mut keys = self.keys.write().await;
        let set: JwkSet = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Keys(e.to_string()))?
            .json()
            .await
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        keys.by_id = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let id = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (id, key))
            })
            .collect();
        keys.fetched_at = Some(Instant::now());
        keys.by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(Some(kid.to_owned())))
    }
}

/// Middleware for push routes: lets a request through only with a valid push token.
pub async fn require_push_token(
    State(verifier): State<OidcVerifier>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match verifier.verify(authorization).await {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, post};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use tower::ServiceExt;

    const KEY: &[u8] = include_bytes!("../tests/fixtures/push-auth-test-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../tests/fixtures/push-auth-other-key.pem");
    const JWKS: &str = include_str!("../tests/fixtures/push-auth-test-jwks.json");
    const AUDIENCE: &str = "https://saga-order-123.europe-west1.run.app";
    const PUSHER: &str = "saga-push@shop.iam.gserviceaccount.com";

    /// Serves the test JWKS on a free local port, as Google serves its keys.
    async fn jwks_server() -> String {
        let app = Router::new().route("/certs", get(|| async { JWKS }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/certs")
    }

    fn token(key: &[u8], kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    }

    fn claims(aud: &str, email: &str, exp_from_now: i64) -> serde_json::Value {
        let now = jiff::Timestamp::now().as_second();
        serde_json::json!({
            "iss": "https://accounts.google.com", "aud": aud, "email": email,
            "email_verified": true, "iat": now, "exp": now + exp_from_now,
            "sub": "1234567890",
        })
    }

    async fn app() -> Router {
        let verifier = OidcVerifier::new(OidcSettings {
            audience: AUDIENCE.into(),
            service_account: PUSHER.into(),
            jwks_url: jwks_server().await,
        });
        Router::new()
            .route("/push/order", post(|| async { "processed" }))
            .layer(axum::middleware::from_fn_with_state(
                verifier,
                require_push_token,
            ))
    }

    async fn push(app: &Router, authorization: Option<String>) -> StatusCode {
        let mut request = axum::http::Request::post("/push/order");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    }

    fn bearer(token: String) -> Option<String> {
        Some(format!("Bearer {token}"))
    }

    #[tokio::test]
    async fn a_valid_google_push_token_is_accepted() {
        let app = app().await;
        let t = token(KEY, "test-key-1", claims(AUDIENCE, PUSHER, 600));
        assert_eq!(push(&app, bearer(t)).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_401() {
        let app = app().await;
        assert_eq!(push(&app, None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            push(&app, Some("Basic abc".into())).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            push(&app, bearer("not.a.jwt".into())).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_401() {
        let app = app().await;
        let t = token(KEY, "test-key-1", claims(AUDIENCE, PUSHER, -3600));
        assert_eq!(push(&app, bearer(t)).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_401() {
        let app = app().await;
        let t = token(
            KEY,
            "test-key-1",
            claims("https://elsewhere.run.app", PUSHER, 600),
        );
        assert_eq!(push(&app, bearer(t)).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_token_from_another_issuer_is_401() {
        let app = app().await;
        let mut c = claims(AUDIENCE, PUSHER, 600);
        c["iss"] = "https://evil.example".into();
        let t = token(KEY, "test-key-1", c);
        assert_eq!(push(&app, bearer(t)).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_bad_signature_is_401() {
        let app = app().await;
        // Signed by another key, claiming Google's key id.
        let t = token(OTHER_KEY, "test-key-1", claims(AUDIENCE, PUSHER, 600));
        assert_eq!(push(&app, bearer(t)).await, StatusCode::UNAUTHORIZED);
        let t = token(OTHER_KEY, "unknown-key", claims(AUDIENCE, PUSHER, 600));
        assert_eq!(push(&app, bearer(t)).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_valid_token_for_another_account_is_403() {
        let app = app().await;
        let t = token(
            KEY,
            "test-key-1",
            claims(AUDIENCE, "intruder@shop.iam.gserviceaccount.com", 600),
        );
        assert_eq!(push(&app, bearer(t)).await, StatusCode::FORBIDDEN);
        let mut c = claims(AUDIENCE, PUSHER, 600);
        c["email_verified"] = false.into();
        assert_eq!(
            push(&app, bearer(token(KEY, "test-key-1", c))).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn keys_that_cannot_be_fetched_answer_503_so_pubsub_retries() {
        let verifier = OidcVerifier::new(OidcSettings {
            audience: AUDIENCE.into(),
            service_account: PUSHER.into(),
            jwks_url: "http://127.0.0.1:9/certs".into(),
        });
        let t = token(KEY, "test-key-1", claims(AUDIENCE, PUSHER, 600));
        let e = verifier
            .verify(Some(&format!("Bearer {t}")))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
