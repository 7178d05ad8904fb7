//! Per-client throttling: 429 with Retry-After before any work starts, success after waiting,
//! and no acknowledged write lost.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::common::{TestApp, outcome, patient};
use crate::{client, register, send, system_token};

#[tokio::test]
async fn an_over_limit_client_gets_429_then_succeeds_after_retry_after_and_no_write_is_lost() {
    let app = TestApp::spawn().await;
    let mut slow = client("rx9-batch", "RX9", "application");
    // Two writes at once, then one every two seconds.
    slow.rate_per_second = Some(0.5);
    slow.burst = Some(4);
    register(&app, slow).await;
    let token = system_token(&app, "rx9-batch", "RX9", &["system/*.cruds"]);
    let nhs = ["9434765919", "9434765870", "9449304130", "9449305552"];

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for number in nhs {
        let r = send(
            &app,
            Method::POST,
            &app.url("Patient"),
            &token,
            Some(&patient(number)),
        )
        .await;
        match r.status().as_u16() {
            201 => acknowledged.push(number),
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Each write costs 2 tokens of a 4-token bucket: two pass, the third is throttled.
    assert_eq!(acknowledged.len(), 2);
    let r = refused.expect("a write is throttled");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let body = outcome(r, 429).await;
    assert_eq!(body["issue"][0]["code"], "throttled");
    // Every acknowledged write is stored; the refused one wrote nothing.
    assert_eq!(app.count("resource_version").await, 2);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = send(
        &app,
        Method::POST,
        &app.url("Patient"),
        &token,
        Some(&patient(nhs[2])),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(app.count("resource_version").await, 3);
    // Every acknowledged write is stored under its own NHS number (read from the database:
    // the client's bucket is empty, and reading is not what this test is about).
    for number in [nhs[0], nhs[1], nhs[2]] {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM resource_identifier WHERE resource_type = 'Patient' AND value = $1",
        )
        .bind(number)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored, 1, "{number}");
    }

    // The throttled request shows in the product metrics.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.origin))
        .header(
            "Authorization",
            format!("Bearer {}", app.trust_token("RX1")),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shcr_api_throttled_total{client=\"rx9-batch\",limit=\"rate\"}"),
        "throttle metric missing"
    );
}

#[tokio::test]
async fn heavy_searches_are_throttled_before_cheap_reads() {
    let app = TestApp::spawn().await;
    let mut c = client("rx8-portal", "RX8", "application");
    c.rate_per_second = Some(0.1);
    c.burst = Some(6);
    register(&app, c).await;
    let token = system_token(&app, "rx8-portal", "RX8", &[]);
    // _include and a large _count: 1 + 1 + 2 + 4 = 8 tokens, clamped to the whole bucket.
    let heavy = app.url("Patient?_include=Patient:organization&_count=500");
    let r = send(&app, Method::GET, &heavy, &token, None).await;
    assert_eq!(r.status(), 200);
    // The bucket is empty now: even a read waits.
    let r = send(&app, Method::GET, &app.url("Patient/x"), &token, None).await;
    let body: Value = outcome(r, 429).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
}
