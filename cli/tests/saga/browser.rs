//! The shop in a real headless browser (Debian's chromium and chromium-driver): place an
//! order from the form, watch it reach COMPLETED without reloading, place one that fails and
//! see its reason and timeline. Screenshots go to target/screenshots/.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use saga_contracts::topology::Function;
use serde_json::json;

use crate::helpers::spawn_app;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: tokio::process::Child,
    url: String,
}

async fn chromedriver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the browser test needs Debian's chromium and chromium-driver: \
         apt-get install chromium chromium-driver (.ci/run installs them)"
    );
    let port = saga_emulator::free_port().unwrap();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    wait_until(20, "chromedriver to start", async || {
        reqwest::get(&status).await.ok().map(|_| ())
    })
    .await;
    Driver { child, url }
}

/// Asks `probe` every 100 ms until it answers, and fails the test, saying what it waited
/// for, after `secs` seconds.
async fn wait_until<T>(secs: u64, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,900",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Waits until the order row of the page's newest order says `status`; returns (id, reason).
async fn wait_for_row(client: &Client, id: &str, status: &str) -> String {
    let row = format!("tr[data-order-id='{id}']");
    wait_until(60, &format!("order {id} to show {status}"), async || {
        let cell = client
            .find(Locator::Css(&format!("{row} td.status")))
            .await
            .ok()?;
        if cell.text().await.unwrap_or_default() != status {
            return None;
        }
        let reason = client
            .find(Locator::Css(&format!("{row} td.reason")))
            .await
            .ok()?;
        reason.text().await.ok()
    })
    .await
}

/// Places an order from the form and returns its id (from the row that appears).
async fn place(
    client: &Client,
    item: &str,
    quantity: u32,
    user: &str,
    payment_error: bool,
) -> String {
    let before: Vec<String> = ids(client).await;
    for (field, value) in [
        ("item", item.to_owned()),
        ("quantity", quantity.to_string()),
        ("user", user.to_owned()),
    ] {
        let input = client.find(Locator::Id(field)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(&value).await.unwrap();
    }
    let checkbox = client.find(Locator::Id("payment-error")).await.unwrap();
    if checkbox.is_selected().await.unwrap() != payment_error {
        checkbox.click().await.unwrap();
    }
    click(client, "#place").await;
    wait_until(20, "the order's row", async || {
        ids(client)
            .await
            .into_iter()
            .find(|id| !before.contains(id))
    })
    .await
}

async fn ids(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for row in client
        .find_all(Locator::Css("#orders tbody tr"))
        .await
        .unwrap_or_default()
    {
        if let Ok(Some(id)) = row.attr("data-order-id").await {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_places_orders_from_the_browser_and_sees_them_complete_or_fail() {
    let app = spawn_app().await;
    let mut driver = chromedriver().await;
    let client = browser(&driver).await;
    let shots = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/screenshots"
    ));
    std::fs::create_dir_all(shots).unwrap();

    client
        .goto(&app.url(Function::Frontend, "/"))
        .await
        .unwrap();
    assert_eq!(client.title().await.unwrap(), "Order saga");

    let good = place(&client, "widget", 2, "jack", false).await;
    let reason = wait_for_row(&client, &good, "COMPLETED").await;
    assert_eq!(reason, "");

    let bad = place(&client, "wotsit", 1, "jill", true).await;
    let reason = wait_for_row(&client, &bad, "COMPENSATED").await;
    assert_eq!(reason, "payment-error");

    // A rejected form shows the API's error.
    client
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    client
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys("no/slash")
        .await
        .unwrap();
    click(&client, "#place").await;
    wait_until(10, "the API's error about user", async || {
        let text = text_of(&client, "#error").await;
        text.contains("user").then_some(())
    })
    .await;

    // The failed order's timeline.
    click(&client, &format!("tr[data-order-id='{bad}']")).await;
    let timeline = wait_until(10, "the failed order's timeline", async || {
        let timeline = text_of(&client, "#timeline").await;
        timeline.contains("janitor").then_some(timeline)
    })
    .await;
    assert!(
        timeline.contains("COMPENSATED (payment-error)"),
        "{timeline}"
    );
    assert!(timeline.contains("inventory"), "{timeline}");
    // The picture: a lane per step, an arrow per event consumed, the compensation marked;
    // the stock it took, given back.
    assert_eq!(count(&client, "#saga-picture g.lane").await, 5);
    assert!(count(&client, "#saga-picture g.arrow").await >= 4);
    assert!(count(&client, "#saga-picture g.arrow.compensation").await >= 1);
    assert_eq!(count(&client, "#touched li.stock.RELEASED").await, 1);
    assert_eq!(count(&client, "#touched li.balance").await, 0);
    shot(&client, &shots.join("saga-compensated.png")).await;

    // A completed one: every arrow forward, the stock taken and the balance charged.
    click(&client, &format!("tr[data-order-id='{good}']")).await;
    wait_until(10, "the completed order's picture", async || {
        (count(&client, "#touched li.balance.CAPTURED").await == 1).then_some(())
    })
    .await;
    assert_eq!(count(&client, "#touched li.stock.RESERVED").await, 1);
    // order-requested, order-created, inventory-reserved (payment-created goes to people).
    assert_eq!(count(&client, "#saga-picture g.arrow").await, 3);
    assert_eq!(
        count(&client, "#saga-picture g.arrow.compensation").await,
        0
    );
    let payment = client
        .find(Locator::Css(
            "#saga-picture g.arrow[data-event='inventory-reserved'] text",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(payment.starts_with("inventory-reserved +"), "{payment}");
    shot(&client, &shots.join("shop.png")).await;

    client.close().await.unwrap();
    let _ = driver.child.kill().await;
    app.assert_invariants().await;
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map(|found| found.len())
        .unwrap_or(0)
}

async fn shot(client: &Client, path: &std::path::Path) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(path, &png).unwrap();
}

/// The operator's console (served by `saga up` on its control port, and by `saga console`):
/// the parked messages and the dead letters, and a redrive button that sends one back to
/// the topic it was meant for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_parked_messages_and_dead_letters_and_redrives_one() {
    let app = spawn_app().await;
    let order = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(order).await["status"], "COMPLETED");
    // Poison, parked by inventory.
    let (status, _) = app
        .push_raw(
            Function::Inventory,
            json!({"message": {"data": "bm90IGFuIGV2ZW50", "messageId": "7"}, "subscription": "x"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    // A dead letter as Pub/Sub writes one: the order's order-created event, from
    // order-created-sub.
    let doc = app.order_doc(order).await.unwrap();
    let emitted = doc.step("order").unwrap().emitted.clone().unwrap();
    let pubsub = saga_ops::pubsub_rest::PubsubRest::emulator(&app.pubsub_host, &app.project);
    let mut attributes = emitted.attributes.clone();
    attributes.insert(
        "CloudPubSubDeadLetterSourceSubscription".into(),
        format!("projects/{}/subscriptions/order-created-sub", app.project),
    );
    pubsub
        .publish(
            "order-created-sub-dlq",
            emitted.payload.as_bytes(),
            &attributes,
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let console = listener.local_addr().unwrap();
    let router = saga_ops::console::router(app.store.clone(), pubsub);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let mut driver = chromedriver().await;
    let client = browser(&driver).await;
    client.goto(&format!("http://{console}/")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "Saga console");
    let dead = "#letters tr[data-place='order-created-sub-dlq-sub']";
    wait_until(20, "the parked message and the dead letter", async || {
        let parked = count(&client, "#letters tr[data-place='parked']").await;
        (count(&client, dead).await == 1 && parked == 1).then_some(())
    })
    .await;
    let row = client
        .find(Locator::Css(dead))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        row.contains("order-created-sub") && row.contains(&order.to_string()),
        "{row}"
    );
    let shots = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/screenshots"
    ));
    std::fs::create_dir_all(shots).unwrap();
    shot(&client, &shots.join("console.png")).await;

    // Redriven: gone from the console, and inventory had it again (a duplicate, so nothing
    // changed).
    click(&client, &format!("{dead} button.redrive")).await;
    wait_until(
        30,
        "the letter redriven and taken by inventory",
        async || {
            let order = app.order_doc(order).await?;
            let redelivered = order.duplicates.iter().any(|d| d.step == "inventory");
            (redelivered && count(&client, dead).await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(count(&client, "#letters tr[data-place='parked']").await, 1);
    client.close().await.unwrap();
    let _ = driver.child.kill().await;
    server.abort();
    app.assert_invariants().await;
}
