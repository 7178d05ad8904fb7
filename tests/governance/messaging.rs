//! NATS messages pass the consumer registry like REST requests.

use async_nats::HeaderMap;

use crate::common::TestApp;
use crate::support::{admission, at, eventually, nats_url, scalar};
use crate::{client, register, system_token};

async fn publish(subject: &str, token: &str, body: Vec<u8>) {
    let nats = async_nats::connect(nats_url())
        .await
        .expect("NATS (scripts/test.sh starts one)");
    let js = async_nats::jetstream::new(nats);
    let mut headers = HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    js.publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream");
}

#[tokio::test]
async fn messages_from_an_unregistered_client_are_dead_lettered_until_it_is_registered() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (stream, prefix) = (format!("SHCR_GOV_{id}"), format!("shcrgov.{id}"));
    let nats = async_nats::connect(nats_url()).await.expect("NATS");
    let js = async_nats::jetstream::new(nats);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .expect("stream");
    let (s, p) = (stream.clone(), prefix.clone());
    let app = TestApp::spawn_with(move |settings| {
        settings.governance.auto_register = Some(false);
        settings.events.nats.url = Some(nats_url());
        settings.events.nats.stream = s;
        settings.events.nats.subject_prefix = p;
        settings.events.nats.consumer = format!("shcr-gov-{id}");
        settings.events.subscriptions.enabled = false;
    })
    .await;
    let subject = format!("{prefix}.RX1.encounter-admitted-1");
    let token = system_token(&app, "rx1-pas", "RX1", &["system/*.cruds"]);
    let message = |n: u64| {
        admission("RX1", &format!("m{n}"), &at(n), "P1", "E1", "Smith")
            .to_string()
            .into_bytes()
    };

    publish(&subject, &token, message(1)).await;
    eventually(
        "the unregistered client's message dead-lettered",
        30,
        || async { scalar(&app, "SELECT count(*) FROM dead_letter").await == 1 },
    )
    .await;
    let (code, reason): (String, String) =
        sqlx::query_as("SELECT reason_code, reason::text FROM dead_letter")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(code, "refused");
    assert!(reason.contains("not registered"), "{reason}");

    register(&app, client("rx1-pas", "RX1", "application")).await;
    publish(&subject, &token, message(2)).await;
    eventually("the registered client's message applied", 30, || async {
        scalar(&app, "SELECT count(*) FROM event_idempotency").await == 1
    })
    .await;
    assert_eq!(scalar(&app, "SELECT count(*) FROM dead_letter").await, 1);
    let _ = js.delete_stream(&stream).await;
}
