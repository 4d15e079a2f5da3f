//! The shop in a browser: `GET /`, and `GET /orders/stream`, the caller's recent orders as
//! server-sent events whenever they change (everyone's, with sign-in off).
//!
//! A stream takes one of the instance's slots ([`crate::limits::StreamSlots`]: past the cap,
//! 503) and stays open at most `SAGA_STREAM_MAX_SECS` (the page reconnects); it ends when
//! the process stops, so the server can.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use axum::response::sse::{Event as Sse, KeepAlive};
use futures::StreamExt;
use saga_contracts::order::OrderDoc;

use crate::auth::Caller;
use crate::live::List;
use crate::{ApiError, App, OrderView};

const PAGE: &str = include_str!("../assets/index.html");

/// How many recent orders a page shows.
pub(crate) const RECENT: u32 = 30;

/// `GET /`: the shop: a form, the live list of the caller's recent orders, their timelines.
pub(crate) async fn page(State(app): State<App>) -> Html<String> {
    let flag = |on: bool| if on { "true" } else { "false" };
    Html(
        PAGE.replace("__FAULT_INJECTION__", flag(app.rt.config.fault_injection))
            .replace("__SIGN_IN__", flag(app.users.enabled()))
            .replace("__AUTH_URL__", &sign_in_url(&app.rt.config.user_auth)),
    )
}

/// Where the page signs a user in with email and password (Identity Platform's REST API,
/// or the Firebase Authentication emulator's copy of it).
fn sign_in_url(auth: &saga_infra::config::UserAuth) -> String {
    let saga_infra::config::UserAuth::Firebase(firebase) = auth else {
        return String::new();
    };
    let base = firebase.emulator.as_ref().map_or_else(
        || "https://identitytoolkit.googleapis.com".to_owned(),
        |host| format!("http://{host}/identitytoolkit.googleapis.com"),
    );
    let key = firebase.web_api_key.as_deref().unwrap_or("emulator");
    format!("{base}/v1/accounts:signInWithPassword?key={key}")
}

/// What a page receives: the list's orders as the API shows them, newest change first.
pub(crate) fn render(orders: &[OrderDoc]) -> String {
    let views: Vec<OrderView> = orders
        .iter()
        .filter_map(|o| o.order_uuid().map(|id| OrderView::of(id, o)))
        .collect();
    serde_json::to_string(&views).unwrap_or_default()
}

/// `GET /orders/stream`: server-sent events; an `orders` event with the caller's recent
/// orders whenever they change.
pub(crate) async fn stream_orders(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<
    axum::response::Sse<impl futures::Stream<Item = Result<Sse, std::convert::Infallible>>>,
    ApiError,
> {
    let caller = app.users.caller(&headers).await?;
    let slot = app.streams.take().ok_or(ApiError::TooManyStreams)?;
    let list = match caller {
        Caller::Anyone => List::Everyone,
        Caller::User(uid) => List::User(uid),
    };
    let page = app.live.open(list).await?;
    let stream =
        futures::stream::unfold((page, slot, true), |(mut page, slot, first)| async move {
            let orders = page.next(first).await?;
            let event = Sse::default().event("orders").data(orders.as_ref());
            Some((Ok(event), (page, slot, false)))
        });
    // A stream never ends by itself: it ends when the process stops, so the server can, and
    // after its longest life, so no client holds a slot for good.
    let stopping = app.rt.stopping.clone();
    let longest = app.rt.config.limits.stream_max;
    let stream = stream
        .take_until(async move { stopping.wait().await })
        .take_until(tokio::time::sleep(longest));
    Ok(axum::response::Sse::new(stream).keep_alive(KeepAlive::default()))
}
