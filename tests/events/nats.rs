//! The NATS JetStream consumer: convergence under repeats and reordering, dead letters and
//! replay, and a crash (kill -9) in the middle of the stream.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use async_nats::HeaderMap;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::common::{TestApp, TestDatabase};
use crate::support::*;

/// Per-test stream, subjects and consumer: the system NATS keeps streams between runs.
struct Names {
    stream: String,
    prefix: String,
    consumer: String,
}

impl Names {
    fn new() -> Names {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Names {
            stream: format!("SHCR_TEST_{id}"),
            prefix: format!("shcrtest.{id}"),
            consumer: format!("shcr-test-{id}"),
        }
    }

    fn subject(&self, ods: &str, event: &str) -> String {
        format!("{}.{ods}.{event}", self.prefix)
    }

    async fn cleanup(&self, client: &async_nats::Client) {
        let js = async_nats::jetstream::new(client.clone());
        let _ = js.delete_stream(&self.stream).await;
    }
}

/// The stream as the server would create it; tests publish before the server's consumer task
/// has run.
async fn create_stream(client: &async_nats::Client, names: &Names) {
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.prefix)],
        ..Default::default()
    })
    .await
    .expect("stream");
}

async fn nats_app(names: &Names) -> TestApp {
    create_stream(&client().await, names).await;
    let (stream, prefix, consumer) = (
        names.stream.clone(),
        names.prefix.clone(),
        names.consumer.clone(),
    );
    TestApp::spawn_with(move |s| {
        s.events.nats.url = Some(nats_url());
        s.events.nats.stream = stream;
        s.events.nats.subject_prefix = prefix;
        s.events.nats.consumer = consumer;
        s.events.nats.max_deliver = 3;
        s.events.nats.backoff_seconds = vec![0.2, 0.5];
        s.events.subscriptions.enabled = false;
    })
    .await
}

async fn client() -> async_nats::Client {
    async_nats::connect(nats_url())
        .await
        .expect("NATS (scripts/test.sh starts one)")
}

async fn publish(client: &async_nats::Client, subject: &str, token: Option<&str>, body: Vec<u8>) {
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        headers.insert("Authorization", format!("Bearer {t}").as_str());
    }
    js.publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream");
}

/// Message `k` of the convergence test: patient `k % 40`, encounter `k % 120`, source time `k`.
/// Whether the durable consumer has nothing pending and nothing awaiting acknowledgement.
async fn settled(client: &async_nats::Client, names: &Names) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(&names.stream)
        .await
        .unwrap()
        .get_consumer(&names.consumer)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    info.num_pending == 0 && info.num_ack_pending == 0
}

fn message(k: usize) -> Value {
    let mut m = admission(
        "RX1",
        &format!("m-{k}"),
        &at(k as u64),
        &format!("P{}", k % 40),
        &format!("E{}", k % 120),
        &format!("F{k}"),
    );
    m["entry"][2]["resource"]["period"] = json!({"start": at(k as u64)});
    m
}

/// Local identifier value → (the text that tells which message's state is held, and for
/// Encounters the local identifier of the Patient it refers to).
async fn state(app: &TestApp, resource_type: &str) -> HashMap<String, (String, String)> {
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.value, v.content->'name'->0->>'family', v.content->'period'->>'start',
                v.content->'subject'->>'reference'
         FROM resource_head h
         JOIN resource_version v USING (resource_type, id, version_id)
         JOIN resource_identifier i ON i.resource_type = h.resource_type AND i.id = h.id
         WHERE h.resource_type = $1 AND i.system LIKE 'https://fhir.rx1.example.nhs.uk/%'",
    )
    .bind(resource_type)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let patients: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT 'Patient/' || id, value FROM resource_identifier
         WHERE resource_type = 'Patient' AND system LIKE 'https://fhir.rx1.example.nhs.uk/%'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    rows.into_iter()
        .map(|(key, family, start, subject)| {
            let which = family.or(start).unwrap_or_default();
            let patient = subject
                .and_then(|s| patients.get(&s).cloned())
                .unwrap_or_default();
            (key, (which, patient))
        })
        .collect()
}

/// The issue asks for 10,000 messages; `shcr bench-events` runs that size in release. Here
/// 1,000 messages, each published twice in shuffled order, keep a debug test under a minute.
#[tokio::test]
async fn every_message_twice_in_shuffled_order_converges_to_the_in_order_state() {
    const N: usize = 1000;
    let names = Names::new();
    let app = nats_app(&names).await;
    let client = client().await;
    let token = app.trust_token("RX1");
    let subject = names.subject("RX1", "encounter-admitted-1");
    let mut order: Vec<usize> = (0..N).chain(0..N).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    for k in order {
        publish(
            &client,
            &subject,
            Some(&token),
            message(k).to_string().into_bytes(),
        )
        .await;
    }
    eventually("every message applied", 120, || async {
        scalar(&app, "SELECT count(*) FROM event_idempotency").await == N as i64
    })
    .await;

    // In order, the last message for each resource decides its state.
    let mut expected_patients = HashMap::new();
    let mut expected_encounters = HashMap::new();
    for k in 0..N {
        expected_patients.insert(format!("P{}", k % 40), (format!("F{k}"), String::new()));
        expected_encounters.insert(
            format!("E{}", k % 120),
            (at(k as u64), format!("P{}", k % 40)),
        );
    }
    // Let acknowledgements of the repeats settle before reading the final state.
    eventually("the duplicates processed", 60, || settled(&client, &names)).await;
    assert_eq!(state(&app, "Patient").await, expected_patients);
    assert_eq!(state(&app, "Encounter").await, expected_encounters);
    assert_eq!(scalar(&app, "SELECT count(*) FROM dead_letter").await, 0);
    // Each message applied once: no resource has more versions than messages that named it.
    let versions = scalar(&app, "SELECT count(*) FROM resource_version").await;
    assert!(
        versions <= 2 * N as i64,
        "{versions} versions for {N} messages"
    );
    names.cleanup(&client).await;
}

#[tokio::test]
async fn malformed_and_unauthorised_messages_are_dead_lettered_and_the_stream_continues() {
    let names = Names::new();
    let app = nats_app(&names).await;
    let client = client().await;
    let rx1 = app.trust_token("RX1");
    let subject = names.subject("RX1", "encounter-admitted-1");
    let good = |k: usize| message(k).to_string().into_bytes();

    publish(&client, &subject, Some(&rx1), good(1)).await;
    publish(&client, &subject, Some(&rx1), b"{not json".to_vec()).await;
    // Another trust's token on RX1's subject.
    publish(&client, &subject, Some(&app.trust_token("RX2")), good(2)).await;
    publish(&client, &subject, None, good(3)).await;
    publish(&client, &subject, Some("not.a.jwt"), good(4)).await;
    let mut unknown = message(5);
    unknown["entry"][0]["resource"]["eventCoding"]["code"] = json!("made-up-1");
    publish(
        &client,
        &names.subject("RX1", "made-up-1"),
        Some(&rx1),
        unknown.to_string().into_bytes(),
    )
    .await;
    // Refers to a Practitioner shcr does not hold yet: fixed later, then replayed.
    let mut needs_fix = message(6);
    needs_fix["entry"][2]["resource"]["participant"] = json!([{"individual": {
        "reference": "Practitioner?identifier=https://fhir.rx1.example.nhs.uk/Id/staff|S1"}}]);
    publish(
        &client,
        &subject,
        Some(&rx1),
        needs_fix.to_string().into_bytes(),
    )
    .await;
    publish(&client, &subject, Some(&rx1), good(7)).await;

    eventually(
        "the good messages applied and the bad ones dead-lettered",
        60,
        || async {
            scalar(&app, "SELECT count(*) FROM event_idempotency").await == 2
                && scalar(&app, "SELECT count(*) FROM dead_letter").await == 6
        },
    )
    .await;
    let reasons: Vec<(String, String)> =
        sqlx::query_as("SELECT reason_code, reason::text FROM dead_letter ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let codes: Vec<&str> = reasons.iter().map(|(c, _)| c.as_str()).collect();
    for code in ["invalid", "forbidden", "unauthenticated", "unknown-event"] {
        assert!(codes.contains(&code), "{code} among {codes:?}");
    }
    for (_, reason) in &reasons {
        assert!(reason.contains("OperationOutcome"), "{reason}");
    }
    // Credentials are never kept.
    let headers: Vec<String> = sqlx::query_scalar("SELECT headers::text FROM dead_letter")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(headers.iter().all(|h| !h.to_lowercase().contains("bearer")));
    let metrics = app
        .client
        .get(format!("{}/metrics", app.origin))
        .bearer_auth(&rx1)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shcr_events_dead_letters_total"),
        "{metrics}"
    );
    // The platform event follows each dead letter's store: wait for the sixth.
    eventually("a platform event for every dead letter", 30, || async {
        scalar(
            &app,
            "SELECT count(*) FROM platform_event WHERE code = 'dead-letter-1'",
        )
        .await
            >= 6
    })
    .await;
    let platform = scalar(
        &app,
        "SELECT count(*) FROM platform_event WHERE code = 'dead-letter-1'",
    )
    .await;
    assert_eq!(platform, 6, "one platform event per dead letter, no more");

    // The fix: the Practitioner now exists. Replay everything through the real CLI.
    app.create(&json!({"resourceType": "Practitioner",
        "identifier": [{"system": "https://fhir.rx1.example.nhs.uk/Id/staff", "value": "S1"}]}))
        .await;
    let replay = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shcr"))
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("SHCR_EVENTS__NATS__SUBJECT_PREFIX", &names.prefix)
            .env("RUST_LOG", "error")
            .output()
            .expect("shcr dead-letter")
    };
    let list = replay(&["dead-letter", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 6);
    let out = replay(&["dead-letter", "replay", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("replayed 1, still failing 5"), "{text}");
    let applied = scalar(&app, "SELECT count(*) FROM event_idempotency").await;
    assert_eq!(applied, 3);
    // Replaying again changes nothing.
    let fixed: i64 = sqlx::query_scalar("SELECT id FROM dead_letter WHERE status = 'replayed'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let versions = app.count("resource_version").await;
    let out = replay(&["dead-letter", "replay", &fixed.to_string()]);
    assert!(out.status.success());
    assert_eq!(app.count("resource_version").await, versions);
    let show = replay(&["dead-letter", "show", &fixed.to_string()]);
    let shown: Value = serde_json::from_slice(&show.stdout).expect("show prints JSON");
    assert_eq!(shown["status"], "replayed");
    assert_eq!(shown["payload"]["resourceType"], "Bundle");
    names.cleanup(&client).await;
}

fn serve(db: &TestDatabase, names: &Names, dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_shcr"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("SHCR_PORT", "0")
        .env("SHCR_DEV_ISSUER__ENABLED", "true")
        .env("SHCR_DEV_ISSUER__KEY_FILE", dir.join("key.pem"))
        .env("SHCR_INDEX_DIR", dir.join("index"))
        .env("SHCR_EVENTS__NATS__URL", nats_url())
        .env("SHCR_EVENTS__NATS__STREAM", &names.stream)
        .env("SHCR_EVENTS__NATS__SUBJECT_PREFIX", &names.prefix)
        .env("SHCR_EVENTS__NATS__CONSUMER", &names.consumer)
        // The broker vouches for the trust here (a NATS user per trust): the server's dev
        // issuer changes its URL with every restart on a new port, so tokens would not survive.
        .env("SHCR_EVENTS__NATS__AUTHENTICATION", "subject")
        .env("SHCR_EVENTS__NATS__ACK_WAIT_SECONDS", "2")
        .env("SHCR_EVENTS__SUBSCRIPTIONS__ENABLED", "false")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shcr serve")
}

async fn applied(pool: &sqlx::PgPool) -> i64 {
    // The database is empty until the server has migrated it.
    sqlx::query_scalar("SELECT count(*) FROM event_idempotency")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn a_server_killed_mid_stream_applies_every_message_exactly_once_after_restart() {
    const N: usize = 600;
    let names = Names::new();
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let client = client().await;
    // The stream exists before the server: the whole backlog is waiting when it starts.
    create_stream(&client, &names).await;
    let subject = names.subject("RX1", "encounter-admitted-1");
    for k in 0..N {
        // A new Encounter per message: its version count shows how often the message applied.
        let m = admission(
            "RX1",
            &format!("k-{k}"),
            &at(k as u64),
            &format!("P{}", k % 20),
            &format!("K{k}"),
            &format!("F{k}"),
        );
        publish(&client, &subject, None, m.to_string().into_bytes()).await;
    }

    let mut server = serve(&db, &names, dir.path());
    let mut seen = 0;
    for _ in 0..1200 {
        seen = applied(&pool).await;
        if seen >= (N / 4) as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen > 0, "the server applied nothing before the kill");
    server.kill().expect("kill -9");
    server.wait().unwrap();
    let at_kill = applied(&pool).await;
    assert!(
        at_kill < N as i64,
        "killed mid-stream ({at_kill} of {N} applied)"
    );

    let mut server = serve(&db, &names, dir.path());
    let done = async {
        loop {
            if applied(&pool).await == N as i64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(120), done).await;
    let _ = server.kill();
    let _ = server.wait();
    finished.expect("every message applied after the restart");
    let encounters: Vec<(i64,)> = sqlx::query_as(
        "SELECT count(*) FROM resource_version WHERE resource_type = 'Encounter' GROUP BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(encounters.len(), N, "one Encounter per message");
    assert!(
        encounters.iter().all(|(n,)| *n == 1),
        "no message applied twice"
    );
    assert_eq!(
        scalar_pool(&pool, "SELECT count(*) FROM dead_letter").await,
        0
    );
    pool.close().await;
    names.cleanup(&client).await;
}

async fn scalar_pool(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_backlog_with_poison_messages_is_applied_in_groups_and_every_message_settled() {
    const GOOD: usize = 30;
    let names = Names::new();
    let client = client().await;
    // The whole backlog waits in the stream before the server starts, so the consumer takes
    // it in groups (one transaction each) rather than one message at a time.
    create_stream(&client, &names).await;
    // The broker vouches for the trust (subject authentication): no token is needed, so the
    // backlog can be published before the server exists.
    let subject = names.subject("RX1", "encounter-admitted-1");
    let mut poison = 0;
    for k in 0..GOOD {
        publish(&client, &subject, None, message(k).to_string().into_bytes()).await;
        if k % 10 == 3 {
            // Fails inside the transaction: a Practitioner shcr does not hold.
            let mut bad = message(1000 + k);
            bad["entry"][2]["resource"]["participant"] = json!([{"individual": {
                "reference": "Practitioner?identifier=https://fhir.rx1.example.nhs.uk/Id/staff|none"}}]);
            publish(&client, &subject, None, bad.to_string().into_bytes()).await;
            // Fails before it: not JSON.
            publish(&client, &subject, None, b"{not json".to_vec()).await;
            poison += 2;
        }
    }
    let (stream, prefix, consumer) = (
        names.stream.clone(),
        names.prefix.clone(),
        names.consumer.clone(),
    );
    let app = TestApp::spawn_with(move |s| {
        s.events.nats.url = Some(nats_url());
        s.events.nats.stream = stream;
        s.events.nats.subject_prefix = prefix;
        s.events.nats.consumer = consumer;
        s.events.nats.authentication = "subject".into();
        s.events.nats.max_deliver = 3;
        s.events.nats.backoff_seconds = vec![0.2, 0.5];
        s.events.nats.batch_size = 16;
        s.events.nats.concurrency = 2;
        s.events.subscriptions.enabled = false;
    })
    .await;
    eventually(
        "the good messages applied, the poison dead-lettered",
        60,
        || async {
            scalar(&app, "SELECT count(*) FROM event_idempotency").await == GOOD as i64
                && scalar(&app, "SELECT count(*) FROM dead_letter").await == poison
        },
    )
    .await;
    eventually("every message settled with the broker", 60, || {
        settled(&client, &names)
    })
    .await;
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason_code FROM dead_letter ORDER BY reason_code")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(reasons.iter().all(|r| r == "invalid"), "{reasons:?}");
    // Each good message applied once: one version per Encounter, none of the poison ones.
    let versions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.value, count(*) FROM resource_version v
         JOIN resource_identifier i ON i.resource_type = v.resource_type AND i.id = v.id
         WHERE v.resource_type = 'Encounter' GROUP BY i.value",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(versions.len(), GOOD);
    assert!(versions.iter().all(|(_, n)| *n == 1), "{versions:?}");
    // Applied in groups: fewer transactions than messages.
    let transactions = scalar(&app, "SELECT count(DISTINCT txid) FROM change_feed").await;
    assert!(transactions < GOOD as i64, "{transactions} transactions");
    names.cleanup(&client).await;
}
