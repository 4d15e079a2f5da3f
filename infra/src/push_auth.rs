//! Push authentication: who may call a function's push and sweep routes.
//!
//! Pub/Sub signs each push with a Google OIDC token for the push service account, and Cloud
//! Scheduler signs each sweep call the same way. A function configured with [`OidcSettings`]
//! lets a request through only if its token is issued by Google, for this service (audience =
//! the service URL), unexpired, and for the push service account with a verified email.
//!
//! **Behind Cloud Run's invoker check** ([`OidcSettings::iam_fronted`], which Terraform sets
//! on every service only the push identity may invoke) the token has been checked once
//! already: Cloud Run verifies its signature and the caller's `roles/run.invoker`, then
//! forwards it with the signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE` (Cloud Run
//! troubleshooting, "Identity token signature redacted by Google"). There, such a token is
//! accepted after its claims are checked; its signature cannot be. A token that still carries
//! a real signature is verified in full, always. Without `iam_fronted` (locally, or a
//! service Cloud Run does not guard) a removed signature is refused: nothing vouched for it.
//!
//! The token is read from `X-Serverless-Authorization` when present, which Cloud Run checks
//! instead of `Authorization` when both are sent (Cloud Run, "Authenticating
//! service-to-service": "If both headers are provided, only the X-Serverless-Authorization
//! header is checked"), otherwise from `Authorization`.
//!
//! Refusals: 401 for no, a malformed or an invalid token; 403 for a valid token of someone
//! else; 503 when Google's keys cannot be had (Pub/Sub retries). Bodies name the header and
//! say what the caller can act on, never the JWT library's text (that is logged).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::keys::{Expected, KeyCache, KeyError, Policy, TokenError};

pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// What Cloud Run's front end puts in place of a token's signature after checking it.
pub const SIGNATURE_REMOVED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";
/// The header Cloud Run checks in preference to `Authorization`.
pub const SERVERLESS_AUTHORIZATION: &str = "x-serverless-authorization";
/// Clock skew allowed on `exp`, as the JWT library allows it on signed tokens.
const LEEWAY_S: i64 = 60;

/// What a push token must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    /// The audience the subscription puts in its tokens: the service's URL.
    pub audience: String,
    /// The push service account's email.
    pub service_account: String,
    /// Where Google's signing keys are published.
    pub jwks_url: String,
    /// The service is only reachable through Cloud Run's invoker check, which verified the
    /// token's signature and removed it.
    pub iam_fronted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not valid")]
    Invalid(String),
    #[error("the token's signature was removed, but no Cloud Run invoker check vouches for it")]
    SignatureRemoved,
    #[error("the token is signed with an unknown key")]
    UnknownKey(String),
    #[error("the token is not for the push service account")]
    WrongAccount { got: Option<String> },
    #[error("the token's email is not verified")]
    Unverified,
    #[error("the token cannot be checked now, retry later")]
    Keys(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing
            | AuthError::Invalid(_)
            | AuthError::SignatureRemoved
            | AuthError::UnknownKey(_) => StatusCode::UNAUTHORIZED,
            AuthError::WrongAccount { .. } | AuthError::Unverified => StatusCode::FORBIDDEN,
            // Our problem, not the caller's: Pub/Sub retries.
            AuthError::Keys(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What is logged: the detail the answer leaves out.
    fn detail(&self) -> String {
        match self {
            AuthError::Invalid(why) | AuthError::Keys(why) => format!("{self}: {why}"),
            AuthError::UnknownKey(kid) => format!("{self}: {kid:?}"),
            AuthError::WrongAccount { got } => format!("{self}: {got:?}"),
            other => other.to_string(),
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(error: TokenError) -> AuthError {
        match error {
            TokenError::Invalid(why) => AuthError::Invalid(why),
            TokenError::Key(KeyError::Unknown(kid)) => AuthError::UnknownKey(kid),
            TokenError::Key(KeyError::Unavailable(why)) => AuthError::Keys(why),
        }
    }
}

/// The response to a refused push: the status, and a body naming the header.
pub struct Refusal {
    pub error: AuthError,
    pub header: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.error.status();
        tracing::warn!(error = %self.error.detail(), %status, header = self.header, "push refused");
        let body = serde_json::json!({"error": self.error.to_string(), "field": self.header});
        (status, Json(body)).into_response()
    }
}

/// The claims a push token is checked for.
#[derive(Debug, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub aud: String,
    #[serde(default)]
    pub exp: i64,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
}

/// Verifies push tokens; cheap to clone, keys shared.
#[derive(Clone, Debug)]
pub struct OidcVerifier {
    settings: std::sync::Arc<OidcSettings>,
    keys: KeyCache,
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings) -> OidcVerifier {
        OidcVerifier::with_policy(settings, Policy::default())
    }

    pub fn with_policy(settings: OidcSettings, policy: Policy) -> OidcVerifier {
        OidcVerifier {
            keys: KeyCache::new(&settings.jwks_url, policy),
            settings: std::sync::Arc::new(settings),
        }
    }

    /// The header a request's token is read from, and its value.
    pub fn token_header(headers: &HeaderMap) -> (&'static str, Option<&str>) {
        let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
        match value(SERVERLESS_AUTHORIZATION) {
            Some(v) => ("X-Serverless-Authorization", Some(v)),
            None => ("Authorization", value(header::AUTHORIZATION.as_str())),
        }
    }

    /// Checks a bearer header value.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let claims = match token.rsplit_once('.') {
            Some((_, SIGNATURE_REMOVED)) if self.settings.iam_fronted => self.vouched(token)?,
            Some((_, SIGNATURE_REMOVED)) => return Err(AuthError::SignatureRemoved),
            _ => self.signed(token).await?,
        };
        if claims.email.as_deref() != Some(self.settings.service_account.as_str()) {
            return Err(AuthError::WrongAccount { got: claims.email });
        }
        if !claims.email_verified {
            return Err(AuthError::Unverified);
        }
        Ok(claims)
    }

    /// A token with its signature: verified against Google's keys, with its claims.
    async fn signed(&self, token: &str) -> Result<Claims, AuthError> {
        let expected = Expected {
            audience: &self.settings.audience,
            issuers: &GOOGLE_ISSUERS,
            leeway_s: LEEWAY_S as u64,
        };
        Ok(self.keys.verify_rs256(token, expected).await?)
    }

    /// A token whose signature Cloud Run's invoker check verified and removed: its claims.
    fn vouched(&self, token: &str) -> Result<Claims, AuthError> {
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        check_claims(
            &claims,
            &self.settings.audience,
            jiff::Timestamp::now().as_second(),
        )?;
        Ok(claims)
    }
}

/// The issuer, audience and expiry of a token whose signature is not checked here.
fn check_claims(claims: &Claims, audience: &str, now: i64) -> Result<(), AuthError> {
    if !GOOGLE_ISSUERS.contains(&claims.iss.as_str()) {
        return Err(AuthError::Invalid(format!("issuer {:?}", claims.iss)));
    }
    if claims.aud != audience {
        return Err(AuthError::Invalid(format!("audience {:?}", claims.aud)));
    }
    if claims.exp + LEEWAY_S <= now {
        return Err(AuthError::Invalid("expired".into()));
    }
    Ok(())
}

/// Middleware for push routes: lets a request through only with a valid push token.
pub async fn require_push_token(
    State(verifier): State<OidcVerifier>,
    request: Request,
    next: Next,
) -> Response {
    let (header, value) = OidcVerifier::token_header(request.headers());
    match verifier.verify(value).await {
        Ok(_) => next.run(request).await,
        Err(error) => Refusal { error, header }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{KEY_1, KEY_2, KeyServer, PUSHER, google_claims, strip_signature};
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    const AUDIENCE: &str = "https://saga-order-123.europe-west1.run.app";

    async fn app(iam_fronted: bool) -> Router {
        let keys = KeyServer::start(&[KEY_1]).await;
        let verifier = OidcVerifier::new(OidcSettings {
            audience: AUDIENCE.into(),
            service_account: PUSHER.into(),
            jwks_url: keys.url.clone(),
            iam_fronted,
        });
        Router::new()
            .route("/push/order", post(|| async { "processed" }))
            .layer(axum::middleware::from_fn_with_state(
                verifier,
                require_push_token,
            ))
    }

    async fn push(app: &Router, headers: &[(&str, String)]) -> (StatusCode, serde_json::Value) {
        let mut request = axum::http::Request::post("/push/order");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn bearer(token: String) -> Vec<(&'static str, String)> {
        vec![("authorization", format!("Bearer {token}"))]
    }

    fn valid() -> String {
        KEY_1.sign(&google_claims(AUDIENCE, PUSHER, 600))
    }

    #[tokio::test]
    async fn a_valid_google_push_token_is_accepted() {
        assert_eq!(
            push(&app(false).await, &bearer(valid())).await.0,
            StatusCode::OK
        );
        assert_eq!(
            push(&app(true).await, &bearer(valid())).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_401_and_names_the_header() {
        let app = app(false).await;
        let (status, body) = push(&app, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["field"], "Authorization");
        assert_eq!(
            push(&app, &[("authorization", "Basic abc".into())]).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body) = push(&app, &bearer("not.a.jwt".into())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body["error"], "the token is not valid",
            "no library text in the answer: {body}"
        );
    }

    #[tokio::test]
    async fn expired_other_audience_or_other_issuer_tokens_are_401_signed_or_vouched() {
        for iam_fronted in [false, true] {
            let app = app(iam_fronted).await;
            let expired = google_claims(AUDIENCE, PUSHER, -3600);
            let elsewhere = google_claims("https://elsewhere.run.app", PUSHER, 600);
            let mut evil = google_claims(AUDIENCE, PUSHER, 600);
            evil["iss"] = "https://evil.example".into();
            for claims in [expired, elsewhere, evil] {
                let token = KEY_1.sign(&claims);
                assert_eq!(
                    push(&app, &bearer(token.clone())).await.0,
                    StatusCode::UNAUTHORIZED,
                    "{claims}"
                );
                if iam_fronted {
                    assert_eq!(
                        push(&app, &bearer(strip_signature(&token))).await.0,
                        StatusCode::UNAUTHORIZED,
                        "vouched {claims}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_bad_signature_is_401() {
        let app = app(true).await;
        // Signed by another key, claiming Google's key id.
        let claims = google_claims(AUDIENCE, PUSHER, 600);
        let forged = KEY_2.sign_claiming(KEY_1.kid, &claims);
        assert_eq!(
            push(&app, &bearer(forged)).await.0,
            StatusCode::UNAUTHORIZED
        );
        let unknown = KEY_2.sign(&claims);
        assert_eq!(
            push(&app, &bearer(unknown)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_valid_token_for_another_account_or_unverified_is_403() {
        let app = app(false).await;
        let intruder = google_claims(AUDIENCE, "intruder@shop.iam.gserviceaccount.com", 600);
        assert_eq!(
            push(&app, &bearer(KEY_1.sign(&intruder))).await.0,
            StatusCode::FORBIDDEN
        );
        let mut unverified = google_claims(AUDIENCE, PUSHER, 600);
        unverified["email_verified"] = false.into();
        assert_eq!(
            push(&app, &bearer(KEY_1.sign(&unverified))).await.0,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn a_removed_signature_is_accepted_only_behind_the_invoker_check() {
        let stripped = strip_signature(&valid());
        let (status, body) = push(&app(false).await, &bearer(stripped.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(
            push(&app(true).await, &bearer(stripped)).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn x_serverless_authorization_is_checked_in_preference_to_authorization() {
        let app = app(true).await;
        let stripped = strip_signature(&valid());
        // The application's own Authorization header is not a push token: ignored.
        let headers = vec![
            ("x-serverless-authorization", format!("Bearer {stripped}")),
            ("authorization", "Bearer app-session-token".into()),
        ];
        assert_eq!(push(&app, &headers).await.0, StatusCode::OK);
        let (status, body) = push(
            &app,
            &[
                ("x-serverless-authorization", "Bearer junk".into()),
                ("authorization", format!("Bearer {}", valid())),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["field"], "X-Serverless-Authorization");
    }

    #[tokio::test]
    async fn keys_that_cannot_be_fetched_answer_503_so_pubsub_retries() {
        let verifier = OidcVerifier::new(OidcSettings {
            audience: AUDIENCE.into(),
            service_account: PUSHER.into(),
            jwks_url: "http://127.0.0.1:9/certs".into(),
            iam_fronted: false,
        });
        let e = verifier
            .verify(Some(&format!("Bearer {}", valid())))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "the token cannot be checked now, retry later"
        );
    }
}
