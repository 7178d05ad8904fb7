//! Runtime product metrics: per consumer and interaction, on /metrics and as JSON.

use reqwest::Method;
use serde_json::Value;

use crate::common::TestApp;
use crate::support::{admission, eventually, post_message};
use crate::{send, system_token};

async fn usage(app: &TestApp, admin: &str) -> Value {
    let r = send(
        app,
        Method::GET,
        &format!("{}/admin/usage", app.origin),
        admin,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn client<'a>(usage: &'a Value, id: &str) -> Option<&'a Value> {
    usage["clients"]
        .as_array()?
        .iter()
        .find(|c| c["client"] == id)
}

#[tokio::test]
async fn requests_errors_and_data_freshness_are_reported_per_consumer() {
    // Development mode: clients register on first use, so this test names its own.
    let app = TestApp::spawn().await;
    let admin = system_token(&app, "rx7-admin", "RX7", &[shcr::governance::ADMIN_SCOPE]);
    let trust = system_token(&app, "rx7-fresh", "RX7", &["system/*.cruds"]);
    send(&app, Method::GET, &app.url("Patient/absent"), &trust, None).await;
    send(&app, Method::GET, &app.url("Patient?name=x"), &trust, None).await;

    // A message whose source event happened a minute ago.
    let a_minute_ago = shcr::fhir::instant::format_instant(
        time::OffsetDateTime::now_utc() - time::Duration::seconds(60),
    );
    let message = admission("RX7", "fresh-1", &a_minute_ago, "P1", "E1", "Fresh");
    let (status, response) = post_message(&app, &trust, &message).await;
    assert_eq!(status, 200, "{response}");

    eventually("freshness recorded", 15, || async {
        client(&usage(&app, &admin).await, "rx7-fresh")
            .is_some_and(|c| c["freshness"]["events"].as_u64() >= Some(1))
    })
    .await;
    let summary = usage(&app, &admin).await;
    let c = client(&summary, "rx7-fresh").unwrap();
    let freshness = c["freshness"]["maxSeconds"].as_f64().unwrap();
    assert!((60.0..120.0).contains(&freshness), "{freshness}");
    assert_eq!(c["interactions"]["read"]["outcomes"]["not-found"], 1, "{c}");
    assert_eq!(c["interactions"]["search-type"]["outcomes"]["ok"], 1, "{c}");
    assert_eq!(c["interactions"]["process-message"]["requests"], 1, "{c}");
    assert!(c["errors"].as_u64().unwrap() >= 1);

    let metrics = app
        .client
        .get(format!("{}/metrics", app.origin))
        .bearer_auth(&trust)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "shcr_api_requests_total{client=\"rx7-fresh\",interaction=\"read\",outcome=\"not-found\"}",
        "shcr_api_request_duration_seconds_bucket{client=\"rx7-fresh\",interaction=\"search-type\"",
        "shcr_data_freshness_seconds_count{client=\"rx7-fresh\"}",
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }
}
