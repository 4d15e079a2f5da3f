//! The functions behind a stand-in for Cloud Run's front end, as Terraform deploys them: the
//! four internal services invocable only by the push identity, so Cloud Run checks each
//! token before the function sees it.
//!
//! The stand-in does what Google documents, since no local program has this behaviour:
//! - it takes the token from `X-Serverless-Authorization` if present, else `Authorization`
//!   ("If both headers are provided, only the X-Serverless-Authorization header is checked");
//! - no token: 403 ("Calls missing an auth token might cause the 403 error"); a token that
//!   is not a JWT with a valid signature, or for another audience: 401; a valid token of a
//!   caller without `roles/run.invoker`: 403 (Cloud Run troubleshooting, HTTP 401 and 403);
//! - it forwards the request with the checked token's signature replaced by
//!   `SIGNATURE_REMOVED_BY_GOOGLE` ("Identity token signature redacted by Google").

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use saga_contracts::events::{Event, EventBody};
use saga_contracts::topology::Function;
use saga_infra::config::PushAuth;
use saga_infra::keys::{KeyCache, Policy};
use saga_infra::push_auth::{GOOGLE_ISSUERS, OidcSettings, SIGNATURE_REMOVED};
use saga_infra::testing::{KEY_1, KEY_2, KeyServer, PUSHER, google_claims, strip_signature};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, ack_kind, spawn_app};

/// Cloud Run's front end for one service.
#[derive(Clone)]
pub struct CloudRunFront {
    pub url: String,
    inner: Arc<Front>,
}

struct Front {
    upstream: String,
    /// The service's URL: the audience its tokens must carry.
    audience: String,
    /// Who holds `roles/run.invoker` on the service.
    invokers: Vec<String>,
    keys: KeyCache,
    http: reqwest::Client,
    /// The token headers it forwarded, as the container saw them.
    forwarded: Mutex<Vec<(String, String)>>,
}

impl CloudRunFront {
    pub async fn start(
        upstream: String,
        audience: &str,
        invokers: &[&str],
        keys_url: &str,
    ) -> CloudRunFront {
        let inner = Arc::new(Front {
            upstream,
            audience: audience.to_owned(),
            invokers: invokers.iter().map(|s| s.to_string()).collect(),
            keys: KeyCache::new(keys_url, Policy::default()),
            http: reqwest::Client::new(),
            forwarded: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(front).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        CloudRunFront {
            url: format!("http://{addr}"),
            inner,
        }
    }

    /// The token headers the container received, in order.
    pub fn forwarded(&self) -> Vec<(String, String)> {
        self.inner.forwarded.lock().unwrap().clone()
    }
}

async fn front(
    State(front): State<Arc<Front>>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = if headers.contains_key("x-serverless-authorization") {
        "x-serverless-authorization"
    } else {
        "authorization"
    };
    let Some(token) = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
    else {
        return (StatusCode::FORBIDDEN, "The request was not authenticated.").into_response();
    };
    let Some(email) = front.verify(&token).await else {
        return (
            StatusCode::UNAUTHORIZED,
            "The request was not authorized to invoke this service.",
        )
            .into_response();
    };
    if !front.invokers.contains(&email) {
        return (
            StatusCode::FORBIDDEN,
            "Your client does not have permission to get URL from this server.",
        )
            .into_response();
    }
    let stripped = format!("Bearer {}", strip_signature(&token));
    front
        .forwarded
        .lock()
        .unwrap()
        .push((name.to_owned(), stripped.clone()));
    headers.insert(name, stripped.parse().unwrap());
    headers.remove(axum::http::header::HOST);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let answer = front
        .http
        .request(method, format!("{}{path}", front.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the container answers");
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap_or_default();
    (status, headers, body).into_response()
}

impl Front {
    /// The token's email if its signature, issuer, audience and expiry are good.
    async fn verify(&self, token: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            email: String,
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = self.keys.key(&header.kid?).await.ok()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&GOOGLE_ISSUERS);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation).ok()?;
        Some(claims.claims.email)
    }
}

const ORDER_URL: &str = "https://saga-order-123456.europe-west1.run.app";
const JANITOR_URL: &str = "https://saga-janitor-123456.europe-west1.run.app";

/// A push body of a new order's `order-requested` event, and its order id.
fn order_requested() -> (Uuid, String) {
    let id = Uuid::new_v4();
    let event = Event::new(
        id,
        EventBody::OrderRequested {
            order: crate::helpers::jack_widgets(1),
        },
    );
    (
        id,
        saga_infra::push::encode("frontend-sub", &id.to_string(), &event).to_string(),
    )
}

/// `function` deployed as Terraform deploys it: push auth for its URL `url`, behind Cloud
/// Run's invoker check (`iam_fronted`), which only the push identity passes.
async fn behind_cloud_run(
    app: &mut TestApp,
    function: Function,
    url: &str,
    keys: &KeyServer,
    iam_fronted: bool,
) -> CloudRunFront {
    let settings = OidcSettings {
        audience: url.into(),
        service_account: PUSHER.into(),
        jwks_url: keys.url.clone(),
        iam_fronted,
    };
    app.restart_with(function, |c| c.push_auth = PushAuth::Oidc(settings))
        .await;
    CloudRunFront::start(app.url(function, ""), url, &[PUSHER], &keys.url).await
}

/// `order` behind Cloud Run, in a fresh stack.
async fn order_behind_cloud_run(keys: &KeyServer, iam_fronted: bool) -> (TestApp, CloudRunFront) {
    let mut app = spawn_app().await;
    let front = behind_cloud_run(&mut app, Function::Order, ORDER_URL, keys, iam_fronted).await;
    (app, front)
}

async fn post(url: &str, headers: &[(&str, String)], body: String) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn bearer(name: &'static str, token: &str) -> (&'static str, String) {
    (name, format!("Bearer {token}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_cloud_runs_invoker_check_pushes_and_scheduler_sweeps_are_served() {
    let keys = KeyServer::start(&[KEY_1]).await;
    let (mut app, front) = order_behind_cloud_run(&keys, true).await;
    let janitor = behind_cloud_run(&mut app, Function::Janitor, JANITOR_URL, &keys, true).await;
    let token = KEY_1.sign(&google_claims(ORDER_URL, PUSHER, 3600));

    // A push, as Pub/Sub sends it: Authorization.
    let (id, body) = order_requested();
    let (status, ack) = post(
        &format!("{}/push/frontend-sub", front.url),
        &[bearer("authorization", &token)],
        body,
    )
    .await;
    assert_eq!((status, ack_kind(&ack)), (200, "processed"), "{ack}");
    assert_eq!(app.get_order(id).await["status"], "ORDER_CREATED");

    // The same through X-Serverless-Authorization, the application's own Authorization
    // header left alone.
    let (id, body) = order_requested();
    let (status, ack) = post(
        &format!("{}/push/frontend-sub", front.url),
        &[
            bearer("x-serverless-authorization", &token),
            ("authorization", "Bearer the-apps-own".to_owned()),
        ],
        body,
    )
    .await;
    assert_eq!((status, ack_kind(&ack)), (200, "processed"), "{ack}");
    assert_eq!(app.get_order(id).await["status"], "ORDER_CREATED");

    // A Cloud Scheduler sweep of the janitor: the push identity's token for its URL,
    // Scheduler's headers.
    let sweep = Function::Janitor.sweep_path().unwrap();
    let janitor_token = KEY_1.sign(&google_claims(JANITOR_URL, PUSHER, 3600));
    let (status, report) = post(
        &format!("{}{sweep}", janitor.url),
        &[
            bearer("authorization", &janitor_token),
            ("x-cloudscheduler", "true".to_owned()),
            ("user-agent", "Google-Cloud-Scheduler".to_owned()),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{report}");

    // Every token the functions saw had its signature removed by the front end.
    let mut forwarded = front.forwarded();
    forwarded.extend(janitor.forwarded());
    assert_eq!(forwarded.len(), 3);
    assert!(
        forwarded
            .iter()
            .all(|(_, v)| v.ends_with(SIGNATURE_REMOVED)),
        "{forwarded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_foreign_token_is_refused_by_the_front_end_or_the_function() {
    let keys = KeyServer::start(&[KEY_1]).await;
    let (app, front) = order_behind_cloud_run(&keys, true).await;
    let push_url = format!("{}/push/frontend-sub", front.url);

    // An attacker's token for the push identity, signed with a key that is not Google's,
    // its signature replaced by the marker: the front end checks signatures, so it never
    // reaches the function.
    let forged =
        strip_signature(&KEY_2.sign_claiming(KEY_1.kid, &google_claims(ORDER_URL, PUSHER, 3600)));
    let (id, body) = order_requested();
    let (status, _) = post(&push_url, &[bearer("authorization", &forged)], body).await;
    assert_eq!(status, 401);
    // No token: 403. A valid Google token of someone without the invoker role: 403.
    let (_, body) = order_requested();
    assert_eq!(post(&push_url, &[], body).await.0, 403);
    let intruder = KEY_1.sign(&google_claims(
        ORDER_URL,
        "intruder@shop.iam.gserviceaccount.com",
        3600,
    ));
    let (_, body) = order_requested();
    assert_eq!(
        post(&push_url, &[bearer("authorization", &intruder)], body)
            .await
            .0,
        403
    );
    assert!(front.forwarded().is_empty(), "nothing reached the function");
    assert_eq!(
        app.http
            .get(app.url(Function::Frontend, &format!("/order/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "nothing was processed"
    );

    // A function that Cloud Run does not guard trusts no removed signature: the same forged
    // token sent straight to it is refused.
    let (app, _) = order_behind_cloud_run(&keys, false).await;
    let (_, body) = order_requested();
    let (status, answer) = post(
        &app.url(Function::Order, "/push/frontend-sub"),
        &[bearer("authorization", &forged)],
        body,
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["field"], "Authorization");
}
