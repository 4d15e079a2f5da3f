//! Who is ordering: a Firebase Authentication / Identity Platform ID token
//! (`Authorization: Bearer`), verified here when `SAGA_USER_AUTH=firebase`.
//!
//! What a token must be (Firebase, "Verify ID tokens using a third-party JWT library"):
//! signed RS256 with one of the keys Google publishes for `securetoken`, cached as push
//! authentication caches its keys ([`saga_infra::keys`]); issuer
//! `https://securetoken.google.com/<project>` and audience `<project>`; not expired, not
//! issued in the future; a non-empty subject, the user's id. The order's user is that id.
//!
//! The Firebase Authentication emulator issues unsigned tokens (`alg: none`). They are
//! accepted only where `FIREBASE_AUTH_EMULATOR_HOST` is set, as Firebase's Admin SDKs accept
//! them, and checked for everything but the signature.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use saga_infra::config::{FirebaseAuth, UserAuth};
use saga_infra::keys::{Expected, KeyCache, KeyError, Policy, TokenError};
use serde::Deserialize;

/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_S: i64 = 60;

/// The signed-in user, or nobody (sign-in off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Sign-in is off: the request speaks for whichever user it names.
    Anyone,
    User(String),
}

impl Caller {
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::User(uid) => Some(uid),
        }
    }

    /// Whether the caller may see `user`'s orders.
    pub fn may_see(&self, user: &str) -> bool {
        self.user().is_none_or(|uid| uid == user)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserAuthError {
    #[error("sign in first: send a Firebase ID token as Authorization: Bearer")]
    Missing,
    #[error("the ID token is not valid; sign in again")]
    Invalid(String),
    #[error("the ID token cannot be checked now, retry later")]
    Keys(String),
}

impl IntoResponse for UserAuthError {
    fn into_response(self) -> Response {
        let status = match self {
            UserAuthError::Missing | UserAuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            UserAuthError::Keys(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let detail = match &self {
            UserAuthError::Invalid(why) | UserAuthError::Keys(why) => why.as_str(),
            UserAuthError::Missing => "",
        };
        tracing::info!(error = %self, detail, %status, "caller refused");
        let body = serde_json::json!({"error": self.to_string(), "field": "Authorization"});
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    aud: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: i64,
    #[serde(default)]
    iat: i64,
}

/// Verifies callers' ID tokens; cheap to clone, keys shared.
#[derive(Clone, Debug)]
pub struct Users {
    firebase: Option<(FirebaseAuth, KeyCache)>,
}

impl Users {
    pub fn new(auth: &UserAuth) -> Users {
        Users {
            firebase: match auth {
                UserAuth::Off => None,
                UserAuth::Firebase(f) => {
                    Some((f.clone(), KeyCache::new(&f.jwks_url, Policy::default())))
                }
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.firebase.is_some()
    }

    /// Who sends the request.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, UserAuthError> {
        let Some((firebase, keys)) = &self.firebase else {
            return Ok(Caller::Anyone);
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(UserAuthError::Missing)?;
        let claims: Claims = match &firebase.emulator {
            // The emulator's unsigned tokens, only where it is configured.
            Some(_) if is_unsigned(token) => jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|e| UserAuthError::Invalid(e.to_string()))?,
            _ => {
                let issuer = issuer(&firebase.project_id);
                let expected = Expected {
                    audience: &firebase.project_id,
                    issuers: &[issuer.as_str()],
                    leeway_s: LEEWAY_S as u64,
                };
                keys.verify_rs256(token, expected)
                    .await
                    .map_err(|e| match e {
                        TokenError::Invalid(why) => UserAuthError::Invalid(why),
                        TokenError::Key(KeyError::Unknown(kid)) => {
                            UserAuthError::Invalid(format!("unknown key {kid}"))
                        }
                        TokenError::Key(KeyError::Unavailable(why)) => UserAuthError::Keys(why),
                    })?
            }
        };
        check(
            &claims,
            &firebase.project_id,
            jiff::Timestamp::now().as_second(),
        )?;
        Ok(Caller::User(claims.sub))
    }
}

fn issuer(project_id: &str) -> String {
    format!("https://securetoken.google.com/{project_id}")
}

/// A token with `alg: none` and no signature, as the emulator issues them.
fn is_unsigned(token: &str) -> bool {
    use base64::Engine;
    let mut parts = token.split('.');
    let header = parts.next().and_then(|h| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h.trim_end_matches('='))
            .ok()
    });
    let header: Option<serde_json::Value> = header.and_then(|h| serde_json::from_slice(&h).ok());
    let (_payload, signature) = (parts.next(), parts.next());
    header.is_some_and(|h| h["alg"] == "none") && signature.is_none_or(str::is_empty)
}

/// The claims every token must have, signed or not.
fn check(claims: &Claims, project_id: &str, now: i64) -> Result<(), UserAuthError> {
    let invalid = |why: String| Err(UserAuthError::Invalid(why));
    if claims.iss != issuer(project_id) {
        return invalid(format!("issuer {:?}", claims.iss));
    }
    if claims.aud != project_id {
        return invalid(format!("audience {:?}", claims.aud));
    }
    if claims.exp + LEEWAY_S <= now {
        return invalid("expired".into());
    }
    if claims.iat > now + LEEWAY_S {
        return invalid("issued in the future".into());
    }
    if claims.sub.is_empty() || claims.sub.len() > 128 {
        return invalid("no user id".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_infra::testing::{KEY_1, KEY_2, KeyServer};

    const PROJECT: &str = "shop";

    fn claims(uid: &str, expires_in: i64) -> serde_json::Value {
        let now = jiff::Timestamp::now().as_second();
        serde_json::json!({
            "iss": format!("https://securetoken.google.com/{PROJECT}"), "aud": PROJECT,
            "sub": uid, "user_id": uid, "iat": now, "exp": now + expires_in, "auth_time": now,
        })
    }

    fn unsigned(claims: &serde_json::Value) -> String {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(claims)
        )
    }

    async fn users(emulator: bool) -> (Users, KeyServer) {
        let keys = KeyServer::start(&[KEY_1]).await;
        let users = Users::new(&UserAuth::Firebase(FirebaseAuth {
            project_id: PROJECT.into(),
            jwks_url: keys.url.clone(),
            emulator: emulator.then(|| "127.0.0.1:9099".into()),
            web_api_key: None,
        }));
        (users, keys)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_signed_token_of_the_project_is_its_user() {
        let (users, _keys) = users(false).await;
        let caller = users
            .caller(&bearer(&KEY_1.sign(&claims("uid-1", 600))))
            .await;
        assert_eq!(caller.unwrap(), Caller::User("uid-1".into()));
    }

    #[tokio::test]
    async fn expired_foreign_or_forged_tokens_are_refused() {
        let (users, _keys) = users(false).await;
        let mut other_project = claims("uid-1", 600);
        other_project["aud"] = "elsewhere".into();
        for token in [
            KEY_1.sign(&claims("uid-1", -600)),
            KEY_1.sign(&other_project),
            KEY_2.sign_claiming(KEY_1.kid, &claims("uid-1", 600)),
            KEY_1.sign(&claims("", 600)),
            "junk".to_owned(),
        ] {
            let e = users.caller(&bearer(&token)).await.unwrap_err();
            assert!(matches!(e, UserAuthError::Invalid(_)), "{token}: {e:?}");
        }
        assert!(matches!(
            users.caller(&HeaderMap::new()).await,
            Err(UserAuthError::Missing)
        ));
    }

    #[tokio::test]
    async fn unsigned_tokens_pass_only_where_the_emulator_is_configured() {
        let token = unsigned(&claims("uid-1", 600));
        let (cloud, _k1) = users(false).await;
        assert!(cloud.caller(&bearer(&token)).await.is_err());
        let (local, _k2) = users(true).await;
        assert_eq!(
            local.caller(&bearer(&token)).await.unwrap(),
            Caller::User("uid-1".into())
        );
        // Still checked for everything but the signature.
        let expired = unsigned(&claims("uid-1", -600));
        assert!(local.caller(&bearer(&expired)).await.is_err());
    }

    #[tokio::test]
    async fn sign_in_off_speaks_for_anyone() {
        let users = Users::new(&UserAuth::Off);
        assert_eq!(
            users.caller(&HeaderMap::new()).await.unwrap(),
            Caller::Anyone
        );
        assert!(Caller::Anyone.may_see("jack"));
        assert!(Caller::User("jill".into()).may_see("jill"));
        assert!(!Caller::User("jill".into()).may_see("jack"));
    }
}
