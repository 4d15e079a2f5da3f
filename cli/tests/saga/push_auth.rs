//! The routes only Pub/Sub calls: a function configured for push authentication (as
//! Terraform configures it) refuses pushes without a valid token from the push service
//! account, and processes those with one; on the emulator, which opens a connection for
//! every push and never reuses one, a push route closes its connection after answering.

use saga_contracts::events::{Event, EventBody};
use saga_contracts::topology::Function;
use saga_infra::config::PushAuth;
use saga_infra::push_auth::OidcSettings;
use saga_infra::testing::{KEY_1, KeyServer, PUSHER, google_claims};
use uuid::Uuid;

use crate::helpers::{Options, ack_kind, spawn_app, spawn_app_with};

fn token(audience: &str, email: &str) -> String {
    KEY_1.sign(&google_claims(audience, email, 600))
}

/// The body of a push of a new order's `order-requested` event to `frontend-sub`.
fn order_requested_push() -> String {
    let event = Event::new(
        Uuid::new_v4(),
        EventBody::OrderRequested {
            order: crate::helpers::jack_widgets(1),
        },
    );
    saga_infra::push::encode("frontend-sub", "m-1", &event).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_with_push_auth_accepts_only_the_push_identity() {
    let audience = "https://saga-order-1.europe-west1.run.app";
    let keys = KeyServer::start(&[KEY_1]).await;
    let settings = OidcSettings {
        audience: audience.into(),
        service_account: PUSHER.into(),
        jwks_url: keys.url.clone(),
        iam_fronted: false,
    };
    let mut app = spawn_app_with(Options::default()).await;
    app.stop(Function::Order).await;
    app.config.push_auth = PushAuth::Oidc(settings);
    let port = app.ports[&Function::Order];
    app.start(Function::Order, port).await;

    let body = order_requested_push();
    let url = app.url(Function::Order, "/push/frontend-sub");
    let send = |authorization: Option<String>| {
        let mut request = app
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move { request.send().await.unwrap() }
    };

    let refused = send(None).await;
    assert_eq!(refused.status(), 401);
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["field"], "Authorization");
    let other = token(audience, "intruder@shop.iam.gserviceaccount.com");
    assert_eq!(send(Some(format!("Bearer {other}"))).await.status(), 403);
    let wrong_audience = token("https://elsewhere.run.app", PUSHER);
    assert_eq!(
        send(Some(format!("Bearer {wrong_audience}")))
            .await
            .status(),
        401
    );

    let ok = send(Some(format!("Bearer {}", token(audience, PUSHER)))).await;
    assert_eq!(ok.status(), 200);
    let ack: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(ack_kind(&ack), "processed", "{ack}");

    // Health checks stay open for Cloud Run's probes.
    let health = app.health(Function::Order).await;
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn on_the_emulator_push_routes_close_their_connection_and_the_api_keeps_its_alive() {
    let app = spawn_app().await;
    let connection = |response: &reqwest::Response| {
        response
            .headers()
            .get(reqwest::header::CONNECTION)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    // A push, answered: the connection is closed, as the emulator never reuses it.
    let push = app
        .push_response(Function::Order, order_requested_push().into())
        .await;
    assert_eq!(push.status(), 200);
    assert_eq!(connection(&push).as_deref(), Some("close"));
    // A sweep, which only the scheduler calls, likewise.
    let janitor_sweep = Function::Janitor.sweep_path().unwrap();
    let sweep = app
        .http
        .post(app.url(Function::Janitor, janitor_sweep))
        .send()
        .await
        .unwrap();
    assert_eq!(sweep.status(), 200);
    assert_eq!(connection(&sweep).as_deref(), Some("close"));
    // The API and the health check keep their connections for the next request.
    let order = app
        .post_order(&serde_json::json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(order.status(), 202);
    assert_eq!(connection(&order), None);
    let health = app.health(Function::Order).await;
    assert_eq!(connection(&health), None);
}
