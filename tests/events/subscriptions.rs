//! Outbound topic-based subscriptions: handshake, numbered notifications, retries with backoff
//! through a receiver outage, `$status` and `$events`, and the full-resource policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::common::TestApp;
use crate::support::*;

const PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";

#[derive(Default)]
struct Received {
    failing: bool,
    /// Every notification Bundle accepted (2xx), in arrival order.
    bundles: Vec<Value>,
    refused: usize,
}

/// A rest-hook receiver on a free loopback port that can be told to fail.
struct Receiver {
    url: String,
    state: Arc<Mutex<Received>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().route(
                "/hook",
                web::post().to(move |body: web::Bytes| {
                    let shared = shared.clone();
                    async move {
                        let mut s = shared.lock().unwrap();
                        if s.failing {
                            s.refused += 1;
                            return HttpResponse::ServiceUnavailable().finish();
                        }
                        s.bundles.push(serde_json::from_slice(&body).unwrap());
                        HttpResponse::Ok().finish()
                    }
                }),
            )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.disable_signals().run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
            handle,
        }
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .bundles
            .iter()
            .filter(|b| notification_type(b) == kind)
            .cloned()
            .collect()
    }
}

fn notification_type(bundle: &Value) -> String {
    parameter(&bundle["entry"][0]["resource"], "type")["valueCode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn parameter<'a>(parameters: &'a Value, name: &str) -> &'a Value {
    parameters["parameter"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Event numbers of the notification-events in a Bundle.
fn event_numbers(bundle: &Value) -> Vec<i64> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| {
            p["part"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == "event-number")
                .unwrap()["valueString"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

fn subscription(endpoint: &str, payload: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "ward notifications",
        "criteria": format!("{TOPIC_BASE}/admitted"),
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload}]}
        }
    })
}

async fn fast_app() -> TestApp {
    TestApp::spawn_with(|s| {
        s.events.subscriptions.poll_interval_ms = 100;
        s.events.subscriptions.backoff_initial_ms = 50;
        s.events.subscriptions.backoff_max_seconds = 1;
        s.events.subscriptions.max_failures = 1000;
        s.events.subscriptions.batch_size = 3;
    })
    .await
}

/// Message `m-k` from RX1: the admission of patient `Pk` in encounter `Ek`, which must be accepted.
async fn admit(app: &TestApp, token: &str, k: u64) {
    let m = admission(
        "RX1",
        &format!("m-{k}"),
        &at(k),
        &format!("P{k}"),
        &format!("E{k}"),
        "Smith",
    );
    let (status, r) = post_message(app, token, &m).await;
    assert_eq!(status, 200, "{r}");
}

/// The subscription's `$status` (Null until the dispatcher has taken the new resource in).
async fn status_of(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("Subscription/{id}/$status")).await;
    if r.status() == 404 {
        return Value::Null;
    }
    assert_eq!(r.status(), 200);
    let bundle: Value = r.json().await.unwrap();
    bundle["entry"][0]["resource"].clone()
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_every_notification_numbered_without_gaps() {
    let app = fast_app().await;
    let receiver = Receiver::start().await;
    let sub = app.create(&subscription(&receiver.url, "id-only")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually("the handshake", 30, || async {
        !receiver.of_type("handshake").is_empty()
    })
    .await;
    eventually("the subscription active", 30, || async {
        parameter(&status_of(&app, &id).await, "status")["valueCode"] == "active"
    })
    .await;

    let token = app.trust_token("RX1");
    let send = |k: u64| admit(&app, &token, k);
    send(1).await;
    send(2).await;
    eventually("the first notifications", 30, || async {
        receiver
            .of_type("event-notification")
            .iter()
            .flat_map(event_numbers)
            .count()
            == 2
    })
    .await;

    // The receiver goes down; changes keep coming; shcr retries with backoff.
    receiver.set_failing(true);
    for k in 3..=9 {
        send(k).await;
    }
    eventually("retries against the failing receiver", 30, || async {
        receiver.state.lock().unwrap().refused >= 3
    })
    .await;
    eventually(
        "nine events numbered while the receiver is down",
        30,
        || async {
            let status = status_of(&app, &id).await;
            parameter(&status, "events-since-subscription-start")["valueString"] == "9"
        },
    )
    .await;
    receiver.set_failing(false);
    send(10).await;

    eventually("every notification after recovery", 30, || async {
        let mut numbers: Vec<i64> = receiver
            .of_type("event-notification")
            .iter()
            .flat_map(event_numbers)
            .collect();
        numbers.dedup();
        numbers.len() >= 10
    })
    .await;
    let numbers: Vec<i64> = receiver
        .of_type("event-notification")
        .iter()
        .flat_map(event_numbers)
        .collect();
    assert_eq!(
        numbers,
        (1..=10).collect::<Vec<_>>(),
        "in order, no gaps, no repeats"
    );
    // id-only: the focus is named, the resource itself does not travel.
    let first = &receiver.of_type("event-notification")[0];
    assert!(
        first["entry"][1]["fullUrl"]
            .as_str()
            .unwrap()
            .contains("/Encounter/")
    );
    assert!(first["entry"][1].get("resource").is_none());

    // Catch-up: $events serves any range again.
    let r = app
        .get(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=4&eventsUntilNumber=6"
        ))
        .await;
    assert_eq!(r.status(), 200);
    let events: Value = r.json().await.unwrap();
    assert_eq!(event_numbers(&events), vec![4, 5, 6]);
    assert_eq!(notification_type(&events), "query-event");

    // Another organisation cannot see the subscription.
    let r = app
        .client
        .get(app.url(&format!("Subscription/{id}/$status")))
        .bearer_auth(app.trust_token("RX2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    receiver.handle.stop(false).await;
}

/// A transaction that has written and not finished holds the change feed's horizon for the
/// whole cluster (any database): changes committed meanwhile are above it. They must still be
/// notified at once, handshake included, and not a second time once the horizon passes them.
#[tokio::test]
async fn notifications_flow_while_an_older_transaction_runs_and_are_not_repeated_after_it() {
    let app = fast_app().await;
    let receiver = Receiver::start().await;
    let mut older = app.pool.begin().await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut *older)
        .await
        .unwrap();

    let sub = app.create(&subscription(&receiver.url, "id-only")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually(
        "the handshake while the older transaction runs",
        30,
        || async { !receiver.of_type("handshake").is_empty() },
    )
    .await;
    let token = app.trust_token("RX1");
    let send = |k: u64| admit(&app, &token, k);
    let numbers = || {
        receiver
            .of_type("event-notification")
            .iter()
            .flat_map(event_numbers)
            .collect::<Vec<i64>>()
    };
    send(1).await;
    send(2).await;
    eventually(
        "notifications while the older transaction runs",
        30,
        || async { numbers().len() >= 2 },
    )
    .await;
    let early: i64 = sqlx::query_scalar("SELECT count(*) FROM subscription_dispatched_early")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(early > 0, "the changes were dispatched above the horizon");

    older.rollback().await.unwrap();
    send(3).await;
    eventually("the notification after it", 30, || async {
        numbers().len() >= 3
    })
    .await;
    eventually("the cursor past the early changes", 30, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM subscription_dispatched_early")
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    // One more dispatch round after the cursor passed them: nothing is numbered again.
    send(4).await;
    eventually("the last notification", 30, || async {
        numbers().len() >= 4
    })
    .await;
    assert_eq!(numbers(), vec![1, 2, 3, 4], "in order, no gaps, no repeats");
    let status = status_of(&app, &id).await;
    assert_eq!(
        parameter(&status, "events-since-subscription-start")["valueString"],
        "4"
    );
    receiver.handle.stop(false).await;
}

/// A connection of the test's own, beside the server's pools.
async fn connect(app: &TestApp) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&app.db.url).await.unwrap()
}

/// Sessions of the test's database waiting for a lock.
async fn lock_waiters(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut connect(app).await)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_later_subscription_version_committed_at_an_earlier_feed_position_is_the_one_applied() {
    let app = fast_app().await;
    let (first, second, third) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let patient = app.create(&crate::common::patient("9000000009")).await;
    let sub = app.create(&subscription(&first.url, "id-only")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually(
        "the first handshake and its status written back",
        30,
        || async {
            let r = app.get(&format!("Subscription/{id}")).await;
            !first.of_type("handshake").is_empty()
                && r.json::<Value>().await.unwrap()["status"] == "active"
        },
    )
    .await;
    let base: i64 = sqlx::query_scalar(
        "SELECT version_id FROM resource_head WHERE resource_type = 'Subscription' AND id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // The dispatcher stands still while this holds its cursor, so it reads both later
    // versions in one pass, in feed order.
    let mut paused = connect(&app).await;
    let mut paused = sqlx::Connection::begin(&mut paused).await.unwrap();
    sqlx::query("SELECT 1 FROM subscription_cursor FOR UPDATE")
        .execute(&mut *paused)
        .await
        .unwrap();
    let mut holder = connect(&app).await;
    let mut holder = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query(
        "SELECT 1 FROM resource_head WHERE resource_type = 'Subscription' AND id = $1 FOR UPDATE",
    )
    .bind(&id)
    .execute(&mut *holder)
    .await
    .unwrap();
    // The update waits for the Subscription's head without an xid of its own; the
    // transaction takes its xid on the Patient, then queues behind the update.
    let mut update = subscription(&second.url, "id-only");
    update["id"] = json!(id);
    // Sends a request and returns, once it waits on a lock, its handle (awaited later on purpose).
    #[allow(clippy::async_yields_async)]
    let send_waiting = |method, path: String, body: Value, waiters, what| {
        let sent = tokio::spawn(
            app.request(method, &path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send(),
        );
        let app = &app;
        async move {
            eventually(what, 30, || async { lock_waiters(app).await >= waiters }).await;
            sent
        }
    };
    let update = send_waiting(
        reqwest::Method::PUT,
        format!("Subscription/{id}"),
        update,
        1,
        "the update waiting",
    )
    .await;
    let mut later = subscription(&third.url, "id-only");
    later["id"] = json!(id);
    let mut touched = patient.clone();
    touched["active"] = json!(true);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": touched, "request": {"method": "PUT", "url": format!("Patient/{}", patient["id"].as_str().unwrap())}},
        {"resource": later, "request": {"method": "PUT", "url": format!("Subscription/{id}")}}
    ]});
    let transaction = send_waiting(
        reqwest::Method::POST,
        String::new(),
        bundle,
        2,
        "the transaction waiting",
    )
    .await;
    holder.rollback().await.unwrap();
    assert_eq!(update.await.unwrap().unwrap().status(), 200);
    let r = transaction.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The precondition: the transaction's later version sits before the update's in the feed.
    let order: Vec<i64> = sqlx::query_scalar(
        "SELECT version_id FROM change_feed
         WHERE resource_type = 'Subscription' AND id = $1 AND version_id > $2
         ORDER BY txid, seq",
    )
    .bind(&id)
    .bind(base)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        order,
        vec![base + 2, base + 1],
        "the later version at the earlier position"
    );

    paused.rollback().await.unwrap();
    eventually(
        "the handshake at the later version's endpoint",
        30,
        || async { !third.of_type("handshake").is_empty() },
    )
    .await;
    let held: i64 =
        sqlx::query_scalar("SELECT version_id FROM subscription_state WHERE subscription_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(held >= base + 2, "state at version {held}");
    assert!(
        second.of_type("handshake").is_empty(),
        "the earlier version's endpoint was never in force after the later one"
    );
    for r in [first, second, third] {
        r.handle.stop(false).await;
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_puts_the_subscription_in_error() {
    let app = TestApp::spawn_with(|s| {
        s.events.subscriptions.poll_interval_ms = 100;
        s.events.subscriptions.backoff_initial_ms = 20;
        s.events.subscriptions.max_failures = 3;
    })
    .await;
    // Nothing listens on port 9 (discard) on loopback.
    let sub = app
        .create(&subscription("http://127.0.0.1:9/hook", "empty"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually("the error state", 30, || async {
        parameter(&status_of(&app, &id).await, "status")["valueCode"] == "error"
    })
    .await;
    eventually("the platform event", 10, || async {
        scalar(
            &app,
            "SELECT count(*) FROM platform_event WHERE code = 'subscription-error-1'",
        )
        .await
            == 1
    })
    .await;
    // The status is mirrored into the resource the owner reads.
    eventually("the resource's status", 10, || async {
        let r: Value = app
            .get(&format!("Subscription/{id}"))
            .await
            .json()
            .await
            .unwrap();
        r["status"] == "error"
    })
    .await;
}

#[tokio::test]
async fn full_resource_payloads_are_refused_unless_the_owner_is_allowed() {
    let app = fast_app().await;
    let receiver = Receiver::start().await;
    let denied = app
        .create(&subscription(&receiver.url, "full-resource"))
        .await;
    let id = denied["id"].as_str().unwrap().to_string();
    eventually("the refusal", 30, || async {
        let status = status_of(&app, &id).await;
        parameter(&status, "status")["valueCode"] == "error"
            && parameter(&status, "error")
                .to_string()
                .contains("not permitted")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.of_type("handshake").is_empty(),
        "nothing sent to a refused subscription"
    );
    receiver.handle.stop(false).await;
}

#[tokio::test]
async fn a_nats_channel_gets_a_handshake_heartbeats_and_numbered_events() {
    use futures_util::StreamExt;

    let id = uuid::Uuid::new_v4().simple().to_string();
    let (stream, prefix) = (format!("SHCR_TEST_{id}"), format!("shcrtest.{id}"));
    let app = {
        let (stream, prefix) = (stream.clone(), prefix.clone());
        TestApp::spawn_with(move |s| {
            s.events.nats.url = Some(nats_url());
            s.events.nats.stream = stream;
            s.events.nats.subject_prefix = prefix;
            s.events.subscriptions.poll_interval_ms = 100;
        })
        .await
    };
    let client = async_nats::connect(nats_url()).await.unwrap();
    let subject = format!("shcrnotify.{id}");
    let mut inbox = client.subscribe(subject.clone()).await.unwrap();
    let mut sub = subscription("unused", "id-only");
    sub["channel"] = json!({
        "extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period", "valueUnsignedInt": 1}],
        "type": "message",
        "endpoint": format!("nats:{subject}"),
        "payload": "application/fhir+json"
    });
    app.create(&sub).await;
    async fn next(inbox: &mut async_nats::Subscriber) -> Value {
        let m = tokio::time::timeout(Duration::from_secs(20), inbox.next())
            .await
            .expect("a notification within 20 s")
            .unwrap();
        serde_json::from_slice::<Value>(&m.payload).unwrap()
    }
    assert_eq!(notification_type(&next(&mut inbox).await), "handshake");
    assert_eq!(notification_type(&next(&mut inbox).await), "heartbeat");
    let (status, _) = post_message(
        &app,
        &app.trust_token("RX1"),
        &admission("RX1", "m-1", &at(0), "P1", "E1", "Smith"),
    )
    .await;
    assert_eq!(status, 200);
    let mut numbers = Vec::new();
    while numbers.is_empty() {
        let b = next(&mut inbox).await;
        if notification_type(&b) == "event-notification" {
            numbers = event_numbers(&b);
        }
    }
    assert_eq!(numbers, vec![1]);
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}

#[tokio::test]
async fn full_resource_payloads_carry_only_the_owners_own_data() {
    let app = TestApp::spawn_with(|s| {
        s.events.subscriptions.poll_interval_ms = 100;
        s.events.subscriptions.full_resource_clients = vec!["rx1-pas".into()];
    })
    .await;
    let receiver = Receiver::start().await;
    // Owned by RX1 (the harness's default caller).
    app.create(&subscription(&receiver.url, "full-resource"))
        .await;
    for (ods, token) in [
        ("RX1", app.trust_token("RX1")),
        ("RX2", app.trust_token("RX2")),
    ] {
        let (status, r) = post_message(
            &app,
            &token,
            &admission(ods, &format!("m-{ods}"), &at(0), "P1", "E1", "Smith"),
        )
        .await;
        assert_eq!(status, 200, "{r}");
    }
    let entries = || -> Vec<Value> {
        receiver
            .of_type("event-notification")
            .iter()
            .flat_map(|b| {
                b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(1)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    eventually("both admissions notified", 30, || async {
        entries().len() >= 2
    })
    .await;
    let mut seen = Vec::new();
    for e in entries() {
        let url = e["fullUrl"].as_str().unwrap();
        let id = url.rsplit('/').next().unwrap();
        let org: Option<String> = sqlx::query_scalar(
            "SELECT author_org FROM resource_version WHERE id = $1 ORDER BY version_id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let carried = e.get("resource").is_some();
        assert_eq!(carried, org.as_deref() == Some("RX1"), "{org:?}: {e}");
        seen.push(carried);
    }
    assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
    receiver.handle.stop(false).await;
}
