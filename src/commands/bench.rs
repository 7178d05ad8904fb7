//! `shcr bench`: ingest throughput and read/vread/update latency against a real server and
//! database on this machine. Figures go to BENCHMARKS.md; nothing here is a pass/fail test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use crate::access::dev_issuer::{Grant, TokenClaims};
use crate::config::Settings;
use crate::demo::postgres::EmbeddedPostgres;
use crate::generate::{GenerateOptions, generate};
use crate::startup::Application;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Persons generated and ingested (each is seen by 1–3 trusts).
    #[arg(long, default_value_t = 1000)]
    pub persons: usize,
    #[arg(long, default_value_t = 6)]
    pub trusts: usize,
    /// Bundles posted at the same time during ingest.
    #[arg(long, default_value_t = 4)]
    pub ingest_concurrency: usize,
    /// Concurrent clients in the read/vread/update phase.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds per interaction in the latency phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank].as_secs_f64() * 1000.0
}

fn report(name: &str, mut samples: Vec<Duration>, elapsed: Duration, errors: usize) {
    samples.sort();
    println!(
        "{name:<8} n={:<7} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  max {:>7.2} ms  errors {errors}",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        percentile(&samples, 99.9),
        samples
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN),
    );
}

struct Target {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Target {
    async fn post(&self, path: &str, body: String) -> Result<Value, String> {
        let r = self
            .client
            .post(format!("{}/{path}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", body["issue"][0]["diagnostics"]));
        }
        Ok(body)
    }
}

pub async fn run(mut settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let temp = std::env::temp_dir().join(format!("shcr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&temp)?;
    // A fresh database: on the server of DATABASE_URL, or a private cluster in a temp folder.
    let (embedded, admin_url, db_name) = match settings.database_url.clone() {
        Some(admin) => {
            let name = format!("shcr_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
            let (server, _) = admin.rsplit_once('/').expect("URL with a database");
            settings.database_url = Some(format!("{server}/{name}"));
            (None, Some(admin), Some(name))
        }
        None => {
            let pg = EmbeddedPostgres::start(&temp.join("pg")).await?;
            settings.database_url = Some(pg.database_url());
            (Some(pg), None, None)
        }
    };
    settings.port = 0;
    settings.dev_issuer.enabled = true;
    settings.dev_issuer.key_file = temp.join("key.pem");
    settings.index_dir = Some(temp.join("index"));
    settings.max_body_bytes = 64 * 1024 * 1024;
    settings.db_max_connections = 32;
    let result = bench(settings, &args).await;

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

async fn bench(settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let issuer = app.dev_issuer().expect("dev issuer");
    let token = issuer.mint(&TokenClaims::new(
        app.issuer(),
        &settings.auth.audience,
        &Grant::System {
            client_id: "bench".into(),
            ods_code: "RX1".into(),
            scopes: vec![],
        },
        3600,
    ))?;
    let target = Arc::new(Target {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        base: app.base_url(),
        token,
    });
    let pool = app.store().pool().clone();
    let search = app.search();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    println!(
        "machine: {} cores; persons {}, trusts {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.persons,
        args.trusts
    );

    // Ingest: organisation bundles first (patient bundles refer to them), then the rest.
    let opts = GenerateOptions {
        persons: args.persons,
        trusts: args.trusts,
        seed: 7,
        ..GenerateOptions::default()
    };
    let (orgs, patients): (Vec<_>, Vec<_>) =
        generate(&opts).partition(|b| b.file_name.contains("organisation"));
    for b in &orgs {
        target
            .post("", b.bundle.to_string())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let bodies: Vec<(String, usize)> = patients
        .iter()
        .map(|b| (b.bundle.to_string(), b.resource_count))
        .collect();
    let total_resources: usize = bodies.iter().map(|(_, n)| n).sum();
    let queue = Arc::new(Mutex::new(bodies.into_iter()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.ingest_concurrency {
        let (queue, latencies, errors, target) = (
            queue.clone(),
            latencies.clone(),
            errors.clone(),
            target.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().await.next();
                let Some((body, _)) = next else { break };
                let t = Instant::now();
                match target.post("", body).await {
                    Ok(_) => latencies.lock().await.push(t.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("ingest error: {e}");
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "ingest: {} bundles, {} resources in {:.1}s = {:.0} resources/s (concurrency {})",
        patients.len(),
        total_resources,
        elapsed.as_secs_f64(),
        total_resources as f64 / elapsed.as_secs_f64(),
        args.ingest_concurrency
    );
    let bundle_latencies = std::mem::take(&mut *latencies.lock().await);
    report(
        "bundle",
        bundle_latencies,
        elapsed,
        errors.load(Ordering::Relaxed),
    );

    // Latency: read, vread and update of random Observations by `clients` concurrent clients.
    let ids: Arc<Vec<String>> = Arc::new(
        sqlx::query_scalar(
            "SELECT id FROM resource_head WHERE resource_type = 'Observation' AND NOT deleted LIMIT 20000",
        )
        .fetch_all(&pool)
        .await?,
    );
    if ids.is_empty() {
        anyhow::bail!("no Observations ingested; nothing to read");
    }
    for interaction in ["read", "vread", "update"] {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut clients = Vec::new();
        let started = Instant::now();
        for c in 0..args.clients {
            let (ids, target) = (ids.clone(), target.clone());
            clients.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = 0usize;
                let mut n = c * 7919;
                while Instant::now() < deadline {
                    n = n.wrapping_mul(1103515245).wrapping_add(12345);
                    let id = &ids[n % ids.len()];
                    let t = Instant::now();
                    let timed = match interaction {
                        "read" | "vread" => {
                            let path = if interaction == "read" {
                                format!("{}/Observation/{id}", target.base)
                            } else {
                                format!("{}/Observation/{id}/_history/1", target.base)
                            };
                            target
                                .client
                                .get(path)
                                .header(AUTHORIZATION, format!("Bearer {}", target.token))
                                .send()
                                .await
                                .ok()
                                .filter(|r| r.status().is_success())
                                .map(|_| t.elapsed())
                        }
                        _ => update(&target, id).await,
                    };
                    match timed {
                        Some(d) => samples.push(d),
                        None => errors += 1,
                    }
                }
                (samples, errors)
            }));
        }
        let mut samples = Vec::new();
        let mut errors = 0;
        for c in clients {
            let (s, e) = c.await?;
            samples.extend(s);
            errors += e;
        }
        report(interaction, samples, started.elapsed(), errors);
    }
    search_phase(&target, &pool, args).await?;
    commit_to_searchable(&target, 200).await?;
    index_footprint(&settings, &search, &pool).await?;

    handle.stop(true).await;
    server.await??;
    search.shutdown().await;
    Ok(())
}

/// Values real queries would carry, sampled from the ingested data.
struct Samples {
    patients: Vec<(String, String, String, String)>,
    codes: Vec<String>,
}

async fn samples(pool: &sqlx::PgPool) -> anyhow::Result<Samples> {
    let patients: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT v.id,
                coalesce(v.content->'name'->0->>'family', ''),
                coalesce(v.content->>'birthDate', ''),
                coalesce((SELECT i->>'value' FROM jsonb_array_elements(v.content->'identifier') i
                          WHERE i->>'system' = 'https://fhir.nhs.uk/Id/nhs-number' LIMIT 1), '')
         FROM resource_head h JOIN resource_version v USING (resource_type, id, version_id)
         WHERE h.resource_type = 'Patient' AND NOT h.deleted
         ORDER BY md5(v.id) LIMIT 500",
    )
    .fetch_all(pool)
    .await?;
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT v.content->'code'->'coding'->0->>'code'
         FROM resource_version v WHERE v.resource_type = 'Observation' LIMIT 50",
    )
    .fetch_all(pool)
    .await?;
    Ok(Samples { patients, codes })
}

/// The search mix of BENCHMARKS.md, one query kind per `n`.
fn mix_query(kind: usize, n: usize, s: &Samples) -> String {
    let (id, family, birth, nhs) = &s.patients[n % s.patients.len()];
    let code = &s.codes[n % s.codes.len().max(1)];
    match kind {
        0 => format!("Patient?family={family}&birthdate={birth}"),
        1 => format!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
        2 => format!("Observation?subject=Patient/{id}&code={code}&date=ge2015-01-01"),
        3 => format!("Condition?subject=Patient/{id}&clinical-status=active"),
        4 => format!("Patient?_id={id}&_revinclude=Condition:subject"),
        5 => format!("Observation?subject:Patient.family={family}&_count=20"),
        _ => format!("Encounter?_content={}&_count=20", family.to_lowercase()),
    }
}

const MIX: [&str; 7] = [
    "family+birthdate",
    "nhs-number",
    "obs patient+code+date",
    "condition patient+status",
    "_revinclude",
    "chained",
    "_content",
];

async fn search_phase(
    target: &Arc<Target>,
    pool: &sqlx::PgPool,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let s = Arc::new(samples(pool).await?);
    if s.patients.is_empty() || s.codes.is_empty() {
        anyhow::bail!("nothing ingested to search");
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds * 2);
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let (s, target) = (s.clone(), target.clone());
        clients.push(tokio::spawn(async move {
            let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); MIX.len()];
            let mut errors = 0usize;
            let mut n = c * 7919;
            while Instant::now() < deadline {
                n = n.wrapping_mul(1103515245).wrapping_add(12345) % 1_000_003;
                let kind = n % MIX.len();
                let url = format!("{}/{}", target.base, mix_query(kind, n / 7, &s));
                let t = Instant::now();
                let ok = target
                    .client
                    .get(url)
                    .header(AUTHORIZATION, format!("Bearer {}", target.token))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    samples[kind].push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (samples, errors)
        }));
    }
    let mut by_kind: Vec<Vec<Duration>> = vec![Vec::new(); MIX.len()];
    let mut errors = 0;
    for c in clients {
        let (samples, e) = c.await?;
        for (k, v) in samples.into_iter().enumerate() {
            by_kind[k].extend(v);
        }
        errors += e;
    }
    let elapsed = started.elapsed();
    let all: Vec<Duration> = by_kind.iter().flatten().copied().collect();
    report("search", all, elapsed, errors);
    for (k, v) in by_kind.into_iter().enumerate() {
        report(&format!("  {}", MIX[k]), v, elapsed, 0);
    }
    Ok(())
}

/// Creates resources and immediately searches for each: the search's latency is the time from
/// commit to searchable (it waits for the index to catch up).
async fn commit_to_searchable(target: &Target, n: usize) -> anyhow::Result<()> {
    let mut lags = Vec::with_capacity(n);
    for i in 0..n {
        let family = format!("Lagtest{i}x{}", std::process::id());
        target
            .post(
                "Patient",
                serde_json::json!({"resourceType": "Patient", "name": [{"family": family}]})
                    .to_string(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        let found: Value = target
            .client
            .get(format!("{}/Patient?family:exact={family}", target.base))
            .header(AUTHORIZATION, format!("Bearer {}", target.token))
            .send()
            .await?
            .json()
            .await?;
        if found["total"] != 1 {
            anyhow::bail!("a resource was not searchable right after its commit");
        }
        lags.push(t.elapsed());
        // Spread the writes so each one meets an idle indexer, as a clinician's would.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report("commit→searchable", lags, Duration::from_secs(1), 0);
    Ok(())
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Index size, server memory, and a full reindex's rate.
async fn index_footprint(
    settings: &Settings,
    search: &Arc<crate::search::indexer::SearchIndex>,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    if let Some(dir) = &settings.index_dir {
        println!("index size on disk: {:.1} MB", dir_size(dir) as f64 / 1e6);
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS"))
    {
        println!(
            "process memory (server + bench client): {}",
            rss.trim_start_matches("VmRSS:").trim()
        );
    }
    let dir = std::env::temp_dir().join(format!("shcr-bench-reindex-{}", std::process::id()));
    let started = Instant::now();
    let n = crate::search::indexer::reindex(
        crate::store::Store::from_pool(pool.clone()),
        search.registry.clone(),
        &dir,
        search.base.clone(),
        |_| {},
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "reindex: {n} resources in {secs:.1}s = {:.0} resources/s",
        n as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Read-modify-write with If-Match, as a client doing a safe update would; returns the PUT's
/// latency. Concurrent clients may touch the same resource, so a 412 is an expected answer.
async fn update(target: &Target, id: &str) -> Option<Duration> {
    let url = format!("{}/Observation/{id}", target.base);
    let Ok(r) = target
        .client
        .get(&url)
        .header(AUTHORIZATION, format!("Bearer {}", target.token))
        .send()
        .await
    else {
        return None;
    };
    let etag = r.headers().get("etag").cloned();
    let Ok(mut body) = r.json::<Value>().await else {
        return None;
    };
    body["status"] = Value::String("amended".into());
    let mut put = target
        .client
        .put(&url)
        .header(AUTHORIZATION, format!("Bearer {}", target.token))
        .header(CONTENT_TYPE, "application/fhir+json")
        .body(body.to_string());
    if let Some(etag) = etag {
        put = put.header("if-match", etag);
    }
    let t = Instant::now();
    put.send()
        .await
        .ok()
        .filter(|r| r.status().is_success() || r.status() == 412)
        .map(|_| t.elapsed())
}
