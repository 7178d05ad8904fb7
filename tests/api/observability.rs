//! What operators see: `/readyz` reasons, and the metrics behind the dashboard (database pool,
//! change-feed lag, audit write latency).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use shcr::store::FeedPosition;

use crate::common::{TestApp, patient};

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = app
        .client
        .get(format!("{}/readyz", app.origin))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.origin))
        .header(AUTHORIZATION, format!("Bearer {}", app.trust_token("RX1")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn readyz_lists_each_check_when_ready() {
    let app = TestApp::spawn().await;
    // The (empty) index catches up with the feed within moments of start-up.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (mut status, mut body) = readyz(&app).await;
    while status != 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, body) = readyz(&app).await;
    }
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["search-index"]["ready"], true);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ready"], true);
    assert_eq!(body["checks"]["migrations"]["ready"], true);
}

#[tokio::test]
async fn readyz_says_migrations_are_missing() {
    let app = TestApp::spawn().await;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["migrations"]["ready"], false);
    assert_eq!(body["checks"]["database"]["ready"], true);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("migrations: "), "{reasons}");
}

#[tokio::test]
async fn readyz_reports_a_registered_check_by_name() {
    let app = TestApp::spawn().await;
    let behind = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = behind.clone();
    app.readiness.register(
        "nats-consumer",
        Arc::new(move || {
            let behind = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if behind {
                    Err("not connected to NATS".to_string())
                } else {
                    Ok(())
                }
            })
        }),
    );
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["checks"]["nats-consumer"]["reason"],
        "not connected to NATS"
    );
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("nats-consumer: not connected to NATS"),
        "{reasons}"
    );
    behind.store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, body) = readyz(&app).await;
    assert_eq!(body["checks"]["nats-consumer"]["ready"], true);
}

#[tokio::test]
async fn feed_lag_is_the_age_of_the_oldest_unconsumed_change() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.store.feed_lag(FeedPosition::START).await.unwrap(),
        Duration::ZERO,
        "an empty feed has no lag"
    );
    app.create(&patient("9434765919")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag = app.store.feed_lag(FeedPosition::START).await.unwrap();
    assert!(lag >= Duration::from_millis(250), "{lag:?}");
    assert!(lag < Duration::from_secs(30), "{lag:?}");
    // A consumer that has processed everything has no lag.
    let changes = app
        .store
        .changes_after(FeedPosition::START, 100)
        .await
        .unwrap();
    if let Some(last) = changes.last() {
        assert_eq!(
            app.store.feed_lag(last.position).await.unwrap(),
            Duration::ZERO
        );
    }
    shcr::metrics::record_feed_lag("test-consumer", lag, 42);
    let text = metrics(&app).await;
    assert!(
        text.contains("shcr_change_feed_lag_seconds{consumer=\"test-consumer\"}"),
        "{text}"
    );
    assert!(text.contains("shcr_change_feed_position_txid{consumer=\"test-consumer\"} 42"));
}

/// The value of a metric line `name{consumer="…"} value`, if present.
fn consumer_gauge(text: &str, name: &str, consumer: &str) -> Option<f64> {
    let prefix = format!("{name}{{consumer=\"{consumer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn the_feed_consumers_publish_their_lag_and_position() {
    let app = TestApp::spawn().await;
    app.create(&patient("9434765919")).await;
    let written: i64 = sqlx::query_scalar("SELECT max(txid)::text::bigint FROM change_feed")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Transaction ids are cluster-wide, so a consumer at or past this write has passed it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for consumer in ["search-index", "subscriptions"] {
        loop {
            let text = metrics(&app).await;
            let position = consumer_gauge(&text, "shcr_change_feed_position_txid", consumer);
            let lag = consumer_gauge(&text, "shcr_change_feed_lag_seconds", consumer);
            if let (Some(position), Some(lag)) = (position, lag)
                && position >= written as f64
            {
                assert!((0.0..30.0).contains(&lag), "{consumer}: lag {lag}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{consumer} did not publish a position past {written}: {position:?}, {lag:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn metrics_show_database_pool_and_audit_writes() {
    let app = TestApp::spawn().await;
    let written: Result<(), ()> = shcr::metrics::time_audit_write(async { Ok(()) }).await;
    assert!(written.is_ok());
    let text = metrics(&app).await;
    // The harness sizes the pool at 8; the scrape reads the pool of the server answering it.
    assert!(
        text.contains("shcr_db_pool_connections{state=\"max\"} 8"),
        "{text}"
    );
    assert!(text.contains("shcr_db_pool_connections{state=\"in_use\"}"));
    assert!(text.contains("shcr_audit_write_duration_seconds_count{outcome=\"ok\"}"));
}
