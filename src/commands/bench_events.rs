//! `shcr bench-events`: inbound messages from NATS to committed (throughput with a backlog,
//! then publish-to-commit lag at a steady rate), and notification delivery lag with many
//! rest-hook subscriptions. A fresh database and private stream each run; the server, the
//! publisher and the rest-hook receiver share this machine. Figures go to BENCHMARKS.md.
//!
//! Searchable lag is measured by probing: for every 20th message of the steady phase, a search
//! by its Encounter identifier repeats every 10 ms until it finds it (searches wait for the
//! index to reach the feed position they started at).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use async_nats::HeaderMap;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use time::OffsetDateTime;

use super::cpu_meter::CpuMeter;
use crate::access::dev_issuer::{Grant, TokenClaims};
use crate::config::Settings;
use crate::demo::postgres::EmbeddedPostgres;
use crate::fhir::instant::{format_instant, parse_instant};
use crate::startup::Application;

#[derive(Debug, clap::Args)]
pub struct BenchEventsArgs {
    /// Messages in the throughput phase (each carries ~5 resources).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Distinct patients the messages are spread over (repeats update them).
    #[arg(long, default_value_t = 2_000)]
    pub patients: usize,
    /// Messages per second in the lag phase.
    #[arg(long, default_value_t = 500)]
    pub rate: usize,
    #[arg(long, default_value_t = 10)]
    pub lag_seconds: u64,
    /// Rest-hook subscriptions in the notification phase.
    #[arg(long, default_value_t = 100)]
    pub subscriptions: usize,
    /// Messages per second in the notification phase (each notifies every subscription).
    #[arg(long, default_value_t = 20)]
    pub notify_rate: usize,
    #[arg(long, default_value_t = 10)]
    pub notify_seconds: u64,
    /// Groups of NATS messages processed at the same time by the consumer
    /// (`events.nats.concurrency`).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Most messages applied in one transaction (`events.nats.batch_size`); 1 applies each
    /// message in a transaction of its own.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(|a, b| a.total_cmp(b));
    format!(
        "n={} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

pub async fn run(mut settings: Settings, args: BenchEventsArgs) -> anyhow::Result<()> {
    let temp = std::env::temp_dir().join(format!("shcr-bench-events-{}", std::process::id()));
    std::fs::create_dir_all(&temp)?;
    let (embedded, admin_url, db_name) = match settings.database_url.clone() {
        Some(admin) => {
            let name = format!("shcr_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
            settings.database_url = Some(super::database_url_named(&admin, &name));
            (None, Some(admin), Some(name))
        }
        None => {
            let pg = EmbeddedPostgres::start(&temp.join("pg")).await?;
            settings.database_url = Some(pg.database_url());
            (Some(pg), None, None)
        }
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let nats_url = settings
        .events
        .nats
        .url
        .clone()
        .or_else(|| std::env::var("NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    settings.port = 0;
    settings.dev_issuer.enabled = true;
    settings.dev_issuer.key_file = temp.join("key.pem");
    settings.db_max_connections = 32;
    settings.index_dir = Some(temp.join("index"));
    settings.events.nats.url = Some(nats_url);
    settings.events.nats.stream = format!("SHCR_BENCH_{id}");
    settings.events.nats.subject_prefix = format!("shcrbench.{id}");
    settings.events.nats.consumer = format!("shcr-bench-{id}");
    settings.events.nats.concurrency = args.concurrency;
    settings.events.nats.batch_size = args.batch_size;
    settings.events.subscriptions.poll_interval_ms = 200;
    let result = bench(settings.clone(), &args).await;

    if let Some(client) = crate::events::connect_nats(&settings).await.ok().flatten() {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&settings.events.nats.stream)
            .await;
    }
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    if let (Some(admin), Some(name), false) = (admin_url, db_name, args.keep) {
        let mut conn = PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await?;
    }
    let _ = std::fs::remove_dir_all(&temp);
    result
}

/// An admission with four supporting resources: Patient, Encounter (focus), 3 Observations.
fn message(k: usize, patients: usize, timestamp: OffsetDateTime) -> Value {
    let sys = |what: &str| format!("https://fhir.rx1.example.nhs.uk/Id/{what}");
    let patient = k % patients;
    // Each patient keeps its own demographics from message to message, spread like a real
    // population's: one shared birth date and given name made every generated patient a
    // probable match of every other, so identity linking put all of them in one Person and
    // rewrote that Person (thousands of links) on every message; one surname sound put every
    // patient in the same blocking groups.
    let given = ["Alex", "Sam", "Jo", "Chris", "Pat", "Robin", "Kim", "Lee"][patient % 8];
    // Surnames that also sound different (phonetic codes are blocking keys): three syllables.
    let family = format!(
        "{}{}{}",
        [
            "Ash", "Brad", "Carl", "Dun", "Ever", "Fair", "Gold", "Hart", "Ing", "Kirk"
        ][patient % 10],
        [
            "by", "ford", "ton", "well", "wood", "ley", "more", "field", "ham", "worth"
        ][(patient / 10) % 10],
        [
            "", "s", "er", "ick", "ings", "away", "op", "an", "ridge", "ock"
        ][(patient / 100) % 10],
    );
    let gender = ["female", "male"][patient % 2];
    let birth_date = (time::macros::date!(1930 - 01 - 01)
        + time::Duration::days(((patient * 7_919) % 32_000) as i64))
    .to_string();
    let mut entries = vec![
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000", "resource": {
            "resourceType": "MessageHeader", "id": format!("h{k}"),
            "eventCoding": {"system": "https://fhir.shcr.example.nhs.uk/CodeSystem/event-type", "code": "encounter-admitted-1"},
            "sender": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX1"}},
            "source": {"endpoint": "urn:nhs:addressing:asid:200000000001"},
            "focus": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}]}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": sys("local-patient-identifier"), "value": format!("P{patient}")}],
            "name": [{"family": family, "given": [given]}],
            "gender": gender, "birthDate": birth_date}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002", "resource": {
            "resourceType": "Encounter",
            "identifier": [{"system": sys("encounter"), "value": format!("E{k}")}],
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
            "period": {"start": format_instant(timestamp)}}}),
    ];
    for (n, (code, display, value, unit)) in [
        ("8867-4", "Heart rate", 72.0 + (k % 20) as f64, "/min"),
        ("9279-1", "Respiratory rate", 16.0, "/min"),
        ("8310-5", "Body temperature", 36.8, "Cel"),
    ]
    .into_iter()
    .enumerate()
    {
        entries.push(json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000001{n}"), "resource": {
            "resourceType": "Observation",
            "identifier": [{"system": sys("observation"), "value": format!("O{k}-{n}")}],
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
            "encounter": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"},
            "effectiveDateTime": format_instant(timestamp),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}}));
    }
    json!({"resourceType": "Bundle", "id": format!("bench-{k}"), "type": "message",
           "timestamp": format_instant(timestamp), "entry": entries})
}

struct Publisher {
    js: async_nats::jetstream::Context,
    subject: String,
    token: String,
}

impl Publisher {
    /// Publishes and waits for JetStream to store it; returns the time it was sent.
    async fn publish(&self, body: Vec<u8>) -> anyhow::Result<OffsetDateTime> {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", format!("Bearer {}", self.token).as_str());
        let sent = OffsetDateTime::now_utc();
        self.js
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await?
            .await?;
        Ok(sent)
    }
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_idempotency")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// The bodies of `count` messages starting at `first`, serialised before any clock starts:
/// a trust's system makes its messages on its own machine, so making them here must not take
/// the cores the server is measured on (it was ~13 % of the process's CPU while the backlog
/// drained).
fn bodies(first: usize, count: usize, patients: usize) -> Vec<(String, Vec<u8>)> {
    let base = time::macros::datetime!(2026-01-01 00:00:00 UTC);
    (first..first + count)
        .map(|k| {
            let body = message(k, patients, base + time::Duration::seconds(k as i64));
            (format!("bench-{k}"), body.to_string().into_bytes())
        })
        .collect()
}

/// Publishes `bodies` (message id, body) in order, `rate` per second (0: as fast as possible),
/// returning each message id's send time.
async fn publish_paced(
    publisher: Arc<Publisher>,
    bodies: Vec<(String, Vec<u8>)>,
    rate: usize,
) -> anyhow::Result<HashMap<String, OffsetDateTime>> {
    let count = bodies.len();
    let sent = Arc::new(Mutex::new(HashMap::with_capacity(count)));
    let started = Instant::now();
    let per_tick = if rate == 0 { 64 } else { (rate / 100).max(1) };
    let mut tasks = Vec::new();
    let mut bodies = bodies.into_iter();
    let mut k = 0;
    while k < count {
        let batch: Vec<(String, Vec<u8>)> = bodies.by_ref().take(per_tick).collect();
        k += batch.len();
        let (publisher, sent) = (publisher.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for (id, body) in batch {
                let t = publisher.publish(body).await?;
                sent.lock().unwrap().insert(id, t);
            }
            anyhow::Ok(())
        }));
        if rate > 0 {
            let due = started + pace(k, rate);
            tokio::time::sleep_until(due.into()).await;
        } else if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                t.await??;
            }
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(Arc::try_unwrap(sent)
        .expect("tasks done")
        .into_inner()
        .unwrap())
}

/// When the message after the first `sent` is due at `rate` per second. Batches go out every
/// ~10 ms; the schedule counts messages, not batches, so a rate under 100/s (one message per
/// batch) or not a multiple of 100 is kept: a fixed 10 ms tick sent 20/s as 100/s.
fn pace(sent: usize, rate: usize) -> Duration {
    Duration::from_secs_f64(sent as f64 / rate as f64)
}

/// Messages this process has finished with for good (committed, or refused): the consumer's
/// own counter, read without a statement.
fn concluded() -> i64 {
    let inbound = &crate::events::metrics::INBOUND;
    ["applied", "duplicate", "stale", "rejected"]
        .iter()
        .map(|o| inbound.with_label_values(&[*o]).get() as i64)
        .sum()
}

/// Waits until `target` messages are committed, as PostgreSQL counts them. The count reads
/// every idempotency row (a sequential scan growing with the run: 2–3 ms at 10,000 rows, in
/// the PostgreSQL CPU the bench reports); it is asked only once the consumer's own counter
/// says the messages are concluded, so a run counts them once or twice, not every 20 ms.
async fn wait_applied(pool: &PgPool, target: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while concluded() < target || applied(pool).await < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "messages not applied within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn commit_lags(
    pool: &PgPool,
    sent: &HashMap<String, OffsetDateTime>,
) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<(String, OffsetDateTime)> =
        sqlx::query_as("SELECT key, created_at FROM event_idempotency WHERE scope = 'message'")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, committed)| {
            let t = sent.get(&key)?;
            Some((committed - *t).as_seconds_f64() * 1000.0)
        })
        .collect())
}

#[derive(Default)]
struct Receipts {
    lags_ms: Vec<f64>,
    handshakes: usize,
    events: usize,
}

async fn bench(settings: Settings, args: &BenchEventsArgs) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let issuer = app.dev_issuer().expect("dev issuer");
    let token = issuer.mint(&TokenClaims::new(
        app.issuer(),
        &settings.auth.audience,
        &Grant::System {
            client_id: "rx1-pas".into(),
            ods_code: "RX1".into(),
            scopes: vec![],
        },
        3600,
    ))?;
    let pool = app.store().pool().clone();
    let search = app.search();
    let base = app.base_url();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = crate::events::connect_nats(&settings)
        .await?
        .expect("NATS configured");
    let js = async_nats::jetstream::new(client.clone());
    crate::events::nats::ensure_consumer(&client, &settings.events.nats).await?;
    let publisher = Arc::new(Publisher {
        js,
        subject: format!(
            "{}.RX1.encounter-admitted-1",
            settings.events.nats.subject_prefix
        ),
        token: token.clone(),
    });
    println!(
        "machine: {} cores; {} messages of 6 entries (5 resources), {} patients",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.messages,
        args.patients
    );

    // Every phase's messages are made before the clocks start. Making the throughput phase's
    // on one thread doubles as a reference for the machine's speed (machines of one kind differ).
    let making = Instant::now();
    let throughput_bodies = bodies(0, args.messages, args.patients);
    let made = making.elapsed();
    let lag_count = args.rate * args.lag_seconds as usize;
    let lag_bodies = bodies(args.messages, lag_count, args.patients);
    let notify_count = args.notify_rate * args.notify_seconds as usize;
    let notify_bodies = bodies(args.messages + lag_count, notify_count, args.patients);
    println!(
        "machine speed reference: made and serialised the {} throughput messages in {:.0} ms on one thread ({:.1} µs each)",
        args.messages,
        made.as_secs_f64() * 1000.0,
        made.as_secs_f64() * 1e6 / args.messages.max(1) as f64
    );

    // 1. Throughput: publish as fast as JetStream takes them; the consumer drains meanwhile.
    let whole_run = CpuMeter::start(pool.clone()).await;
    let meter = CpuMeter::start(pool.clone()).await;
    let started = Instant::now();
    publish_paced(publisher.clone(), throughput_bodies, 0).await?;
    let published = started.elapsed();
    wait_applied(&pool, args.messages as i64, Duration::from_secs(1800)).await?;
    let elapsed = started.elapsed();
    // The goal is committed *and searchable*: the indexer's backlog counts too.
    search.wait_fresh(Duration::from_secs(600)).await?;
    let searchable = started.elapsed();
    println!(
        "inbound throughput: {} messages ({} resources) in {:.1}s = {:.0} messages/s, {:.0} resources/s (publishing took {:.1}s)",
        args.messages,
        args.messages * 5,
        elapsed.as_secs_f64(),
        args.messages as f64 / elapsed.as_secs_f64(),
        args.messages as f64 * 5.0 / elapsed.as_secs_f64(),
        published.as_secs_f64()
    );
    println!(
        "  all of them searchable after {:.1}s = {:.0} messages/s; index segments: {}",
        searchable.as_secs_f64(),
        args.messages as f64 / searchable.as_secs_f64(),
        search.index.searchable_segment_ids()?.len()
    );
    meter
        .report(&pool, "first publish → all searchable", args.messages)
        .await;

    let processing = &crate::events::metrics::PROCESSING;
    println!(
        "  mean time to apply one message (parse, authenticate, write, commit): {:.1} ms over {}",
        processing.get_sample_sum() / processing.get_sample_count().max(1) as f64 * 1000.0,
        processing.get_sample_count()
    );

    // 2. Lag at a steady rate: publish (client send) to commit, and for every 20th message
    // to searchable (a search by its Encounter identifier finds it).
    let first = args.messages;
    let waits = &crate::metrics::SEARCH_FRESHNESS_WAIT;
    let index_commits = &crate::metrics::SEARCH_INDEX_COMMIT;
    let before = (
        waits.get_sample_count(),
        waits.get_sample_sum(),
        index_commits.get_sample_count(),
        index_commits.get_sample_sum(),
    );
    let http = reqwest::Client::new();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut probe_tasks = Vec::new();
    let publishing = tokio::spawn(publish_paced(publisher.clone(), lag_bodies, args.rate));
    let probe_started = Instant::now();
    for k in (first..first + lag_count).step_by(20) {
        // Start probing when message k is due to be sent.
        let due =
            probe_started + Duration::from_secs_f64((k - first) as f64 / args.rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, base, token, probes) =
            (http.clone(), base.clone(), token.clone(), probes.clone());
        probe_tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let url = format!(
                "{base}/Encounter?identifier=https%3A%2F%2Ffhir.rx1.example.nhs.uk%2FId%2Fencounter%7CE{k}"
            );
            while t.elapsed() < Duration::from_secs(60) {
                let found = match http.get(&url).bearer_auth(&token).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .map(|b| b["entry"].as_array().is_some_and(|e| !e.is_empty()))
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if found {
                    probes
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let sent = publishing.await??;
    for t in probe_tasks {
        t.await?;
    }
    wait_applied(&pool, (first + lag_count) as i64, Duration::from_secs(600)).await?;
    let lags = commit_lags(&pool, &sent).await?;
    println!(
        "inbound lag at {} messages/s for {}s (publish → committed): {}",
        args.rate,
        args.lag_seconds,
        summary(lags)
    );
    let probed = std::mem::take(&mut *probes.lock().unwrap());
    println!(
        "inbound lag (publish → found by a search on its identifier, every 20th message): {}",
        summary(probed)
    );
    // Where a probe's time goes: nearly all of a search is its wait for freshness, which
    // lasts for the index commit under way and the one that covers it.
    let mean_ms = |n: u64, sum: f64| sum / n.max(1) as f64 * 1000.0;
    let (n_waits, n_commits) = (
        waits.get_sample_count() - before.0,
        index_commits.get_sample_count() - before.2,
    );
    println!(
        "  searches' freshness wait: n={n_waits} mean {:.1} ms; index commits: {n_commits} ({:.1}/s), mean {:.1} ms",
        mean_ms(n_waits, waits.get_sample_sum() - before.1),
        n_commits as f64 / args.lag_seconds.max(1) as f64,
        mean_ms(n_commits, index_commits.get_sample_sum() - before.3),
    );

    // 3. Notification lag with many rest-hook subscriptions.
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    let shared = receipts.clone();
    let receiver = HttpServer::new(move || {
        let shared = shared.clone();
        App::new().route(
            "/hook/{n}",
            web::post().to(move |body: web::Bytes| {
                let shared = shared.clone();
                async move {
                    let now = OffsetDateTime::now_utc();
                    let bundle: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let params = &bundle["entry"][0]["resource"]["parameter"];
                    let mut r = shared.lock().unwrap();
                    for p in params.as_array().into_iter().flatten() {
                        match (p["name"].as_str(), p["valueCode"].as_str()) {
                            (Some("type"), Some("handshake")) => r.handshakes += 1,
                            (Some("notification-event"), _) => {
                                r.events += 1;
                                let ts = p["part"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .find(|x| x["name"] == "timestamp")
                                    .and_then(|x| x["valueInstant"].as_str())
                                    .and_then(parse_instant);
                                if let Some(ts) = ts {
                                    r.lags_ms.push((now - ts).as_seconds_f64() * 1000.0);
                                }
                            }
                            _ => {}
                        }
                    }
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(2)
    .bind(("127.0.0.1", 0))?;
    let port = receiver.addrs()[0].port();
    let receiver = receiver.disable_signals().run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);
    for n in 0..args.subscriptions {
        let sub = json!({
            "resourceType": "Subscription", "status": "requested", "reason": "bench",
            "criteria": "https://fhir.shcr.example.nhs.uk/SubscriptionTopic/admitted",
            "channel": {"type": "rest-hook", "endpoint": format!("http://127.0.0.1:{port}/hook/{n}"),
                        "payload": "application/fhir+json"}
        });
        let r = http
            .post(format!("{base}/Subscription"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(sub.to_string())
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "creating a subscription: {}",
            r.status()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while receipts.lock().unwrap().handshakes < args.subscriptions {
        anyhow::ensure!(Instant::now() < deadline, "handshakes did not all arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_paced(publisher.clone(), notify_bodies, args.notify_rate).await?;
    let expected = notify_count * args.subscriptions;
    let deadline = Instant::now() + Duration::from_secs(600);
    while receipts.lock().unwrap().events < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {expected} notifications arrived",
            receipts.lock().unwrap().events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lags = std::mem::take(&mut receipts.lock().unwrap().lags_ms);
    println!(
        "notification lag, {} rest-hook subscriptions, {} messages/s for {}s (commit → received): {}",
        args.subscriptions,
        args.notify_rate,
        args.notify_seconds,
        summary(lags)
    );

    let total = args.messages + lag_count + notify_count;
    whole_run
        .report(&pool, &format!("whole run ({total} messages)"), total)
        .await;
    println!(
        "  index segments at the end: {}",
        search.index.searchable_segment_ids()?.len()
    );

    receiver_handle.stop(true).await;
    handle.stop(true).await;
    // Before the database is dropped, or the indexer reports it missing.
    search.shutdown().await;
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_is_paced_by_messages_at_any_rate() {
        // 20/s: one message per batch, 50 ms apart; 200 messages take 10 s.
        assert_eq!(pace(1, 20), Duration::from_millis(50));
        assert_eq!(pace(200, 20), Duration::from_secs(10));
        // 250/s: two per batch, every 8 ms.
        assert_eq!(pace(2, 250), Duration::from_millis(8));
        assert_eq!(pace(2500, 250), Duration::from_secs(10));
        assert_eq!(pace(5000, 500), Duration::from_secs(10));
    }
}
