//! `shcr bench --phases ingest,access`: what read-time access control and the audit trail cost.
//!
//! After ingest, a clinician at the organisation with the most care relationships reads
//! Observations of patients it is related to and runs patient-scoped searches, by `--clients`
//! concurrent clients, against this server (enforcement and audit on), a second server on the
//! same database with audit off (policy only) and a third with both off — same data, same
//! load, same token shape, two rounds each. Then the
//! audit write rate (appends through the chain lock) and `audit verify` throughput over
//! `--audit-rows` rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;

use super::bench::{percentile, report};
use super::cpu_meter::CpuMeter;
use crate::access::dev_issuer::{DevIssuer, Grant, TokenClaims};
use crate::audit::{Audit, AuditRecord};
use crate::config::Settings;
use crate::startup::Application;
use crate::store::Store;

struct Sample {
    observations: Vec<String>,
    patients: Vec<String>,
}

async fn sample(store: &Store, org: &str) -> anyhow::Result<Sample> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT v.id, r.patient_id
         FROM (SELECT DISTINCT patient_id FROM access_relationship WHERE org = $1 LIMIT 300) r
         JOIN resource_version v
           ON v.resource_type = 'Observation'
          AND v.content->'subject'->>'reference' = 'Patient/' || r.patient_id
          AND v.version_id = 1
          AND v.content->'meta'->'security' IS NULL
         LIMIT 3000",
    )
    .bind(org)
    .fetch_all(store.pool())
    .await?;
    let mut patients: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    patients.sort();
    patients.dedup();
    Ok(Sample {
        observations: rows.into_iter().map(|r| r.0).collect(),
        patients,
    })
}

fn clinician(
    issuer: &DevIssuer,
    issuer_url: &str,
    audience: &str,
    org: &str,
) -> anyhow::Result<String> {
    Ok(issuer.mint(&TokenClaims::new(
        issuer_url,
        audience,
        &Grant::User {
            user_id: "555000000777".into(),
            name: Some("Bench Clinician".into()),
            role_code: "S8000:G8000:R8000".into(),
            org: org.into(),
            activities: vec!["B0360".into()],
            scopes: vec!["user/*.rs".into()],
        },
        3600,
    ))?)
}

fn next(n: usize) -> usize {
    n.wrapping_mul(1103515245).wrapping_add(12345) % 1_000_003
}

/// The `n`th request of the mix: half reads of related patients' Observations, half
/// patient-scoped searches; returns the URL and whether it is a search.
fn request(base: &str, s: &Sample, n: usize) -> (String, bool) {
    if n.is_multiple_of(2) {
        let p = &s.patients[(n / 2) % s.patients.len()];
        let url = if n.is_multiple_of(4) {
            format!("{base}/Observation?subject=Patient/{p}&_count=20")
        } else {
            format!("{base}/Patient/{p}/Condition")
        };
        (url, true)
    } else {
        let o = &s.observations[(n / 2) % s.observations.len()];
        (format!("{base}/Observation/{o}"), false)
    }
}

/// The same mix sent at a fixed rate whatever the answers take (open loop), the way a region's
/// portals load the server; each latency counts from the request's due time, so a server that
/// falls behind is charged for the queue it builds. Returns (reads, searches, errors).
async fn paced(
    base: &str,
    token: &str,
    s: &Arc<Sample>,
    rate: f64,
    seconds: u64,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client");
    let total = (rate * seconds as f64) as usize;
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 1;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        n = next(n);
        let (url, search) = request(base, s, n);
        let (client, auth) = (client.clone(), format!("Bearer {token}"));
        tasks.spawn(async move {
            let ok = match client.get(url).header(AUTHORIZATION, auth).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (ok, search, due.elapsed())
        });
    }
    let (mut reads, mut searches, mut errors) = (Vec::new(), Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((true, true, t)) => searches.push(t),
            Ok((true, false, t)) => reads.push(t),
            _ => errors += 1,
        }
    }
    (reads, searches, errors)
}

/// Reads and searches for `seconds`; returns (read samples, search samples, errors, elapsed).
async fn load(
    base: &str,
    token: &str,
    s: &Arc<Sample>,
    clients: usize,
    seconds: u64,
) -> (Vec<Duration>, Vec<Duration>, usize, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, s, base, token) = (
            client.clone(),
            s.clone(),
            base.to_string(),
            token.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut searches, mut errors) = (Vec::new(), Vec::new(), 0usize);
            let mut n = c * 7919 + 1;
            while Instant::now() < deadline {
                n = next(n);
                let (url, search) = request(&base, &s, n);
                let t = Instant::now();
                let ok = match client
                    .get(url)
                    .header(AUTHORIZATION, format!("Bearer {token}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                match (ok, search) {
                    (true, true) => searches.push(t.elapsed()),
                    (true, false) => reads.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (reads, searches, errors)
        }));
    }
    let (mut reads, mut searches, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        if let Ok((r, s, e)) = t.await {
            reads.extend(r);
            searches.extend(s);
            errors += e;
        }
    }
    (reads, searches, errors, started.elapsed())
}

/// Hits and misses of the organisation facts cache and of the access filter's segment cache.
struct CacheCounts([u64; 4]);

impl CacheCounts {
    fn since(&self, before: &CacheCounts) -> CacheCounts {
        CacheCounts(std::array::from_fn(|i| self.0[i] - before.0[i]))
    }
}

fn cache_counts() -> CacheCounts {
    use crate::metrics::{FILTER_CACHE, ORG_GRANTS_CACHE};
    CacheCounts([
        ORG_GRANTS_CACHE.with_label_values(&["hit"]).get(),
        ORG_GRANTS_CACHE.with_label_values(&["miss"]).get(),
        FILTER_CACHE.with_label_values(&["hit"]).get(),
        FILTER_CACHE.with_label_values(&["miss"]).get(),
    ])
}

/// Sums of the audit histograms, to tell a request's wait from its group's commit.
struct AuditTimes {
    rows: f64,
    wait_seconds: f64,
    groups: f64,
    group_seconds: f64,
    /// Cumulative counts per upper bound, of the requests' waits and of the groups' commits.
    wait_buckets: Vec<(f64, u64)>,
    group_buckets: Vec<(f64, u64)>,
    /// The journal's group fsyncs, and its shipping statements.
    syncs: f64,
    sync_seconds: f64,
    sync_buckets: Vec<(f64, u64)>,
    ships: f64,
    ship_seconds: f64,
}

fn buckets(h: &prometheus::proto::Histogram) -> Vec<(f64, u64)> {
    h.get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

fn bucket_diff(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .zip(before)
        .map(|(n, b)| (n.0, n.1 - b.1))
        .collect()
}

/// The upper bound of the bucket holding the `q` quantile (∞ past the last bucket).
fn bucket_quantile(buckets: &[(f64, u64)], total: f64, q: f64) -> f64 {
    buckets
        .iter()
        .find(|(_, count)| *count as f64 >= q * total)
        .map_or(f64::INFINITY, |(bound, _)| *bound)
}

impl AuditTimes {
    fn now() -> AuditTimes {
        use crate::metrics::{
            AUDIT_GROUP_SECONDS, AUDIT_JOURNAL_SHIP_SECONDS, AUDIT_JOURNAL_SYNC_SECONDS,
            AUDIT_WRITE,
        };
        use prometheus::core::Metric;
        let write = AUDIT_WRITE.with_label_values(&["ok"]);
        AuditTimes {
            rows: write.get_sample_count() as f64,
            wait_seconds: write.get_sample_sum(),
            groups: AUDIT_GROUP_SECONDS.get_sample_count() as f64,
            group_seconds: AUDIT_GROUP_SECONDS.get_sample_sum(),
            wait_buckets: buckets(write.metric().get_histogram()),
            group_buckets: buckets(AUDIT_GROUP_SECONDS.metric().get_histogram()),
            syncs: AUDIT_JOURNAL_SYNC_SECONDS.get_sample_count() as f64,
            sync_seconds: AUDIT_JOURNAL_SYNC_SECONDS.get_sample_sum(),
            sync_buckets: buckets(AUDIT_JOURNAL_SYNC_SECONDS.metric().get_histogram()),
            ships: AUDIT_JOURNAL_SHIP_SECONDS.get_sample_count() as f64,
            ship_seconds: AUDIT_JOURNAL_SHIP_SECONDS.get_sample_sum(),
        }
    }

    fn since(&self, before: &AuditTimes) -> AuditTimes {
        AuditTimes {
            rows: self.rows - before.rows,
            wait_seconds: self.wait_seconds - before.wait_seconds,
            groups: self.groups - before.groups,
            group_seconds: self.group_seconds - before.group_seconds,
            wait_buckets: bucket_diff(&self.wait_buckets, &before.wait_buckets),
            group_buckets: bucket_diff(&self.group_buckets, &before.group_buckets),
            syncs: self.syncs - before.syncs,
            sync_seconds: self.sync_seconds - before.sync_seconds,
            sync_buckets: bucket_diff(&self.sync_buckets, &before.sync_buckets),
            ships: self.ships - before.ships,
            ship_seconds: self.ship_seconds - before.ship_seconds,
        }
    }
}

fn p99(mut v: Vec<Duration>) -> f64 {
    v.sort();
    percentile(&v, 99.0)
}

/// The server under test (enforcement and audit on), as the bench started it.
pub struct OnServer {
    pub store: Store,
    pub base_url: String,
    pub issuer: Arc<DevIssuer>,
    pub issuer_url: String,
}

/// Runs the access phase.
pub async fn run(
    on: &OnServer,
    settings: &Settings,
    args: &super::bench::BenchArgs,
) -> anyhow::Result<()> {
    use super::bench::BenchDurability;
    let (clients, seconds, warmup) = (args.clients, args.seconds, args.warmup);
    let (audit_rows, durabilities) = (args.audit_rows, &args.audit_durability);
    if let Some(r) = args.access_rate {
        anyhow::ensure!(
            r.is_finite() && r > 0.0,
            "--access-rate must be a positive number of requests/s, not {r}"
        );
    }
    let store = on.store.clone();
    // Not RX1: the bench loads everything as RX1, whose clinicians would see it all as their
    // own trust's data and never exercise relationships.
    let Some(org) = crate::access::facts::busiest_org(&store, Some("RX1")).await? else {
        anyhow::bail!("no care relationships: run the ingest phase first");
    };
    let s = Arc::new(sample(&store, &org).await?);
    if s.observations.is_empty() {
        anyhow::bail!("no Observations of patients related to {org}");
    }
    println!(
        "access: clinician at {org}, {} related patients, {} of their Observations sampled",
        s.patients.len(),
        s.observations.len()
    );

    // The same load against servers on the same database with audit off (policy only), and
    // with both off. Each keeps its own in-memory index, built from the change feed.
    // With `--audit-durability journal`, also a fully audited server whose rows are made durable
    // in a local journal ("on-journal"), in a folder of its own.
    let journal_dir = std::env::temp_dir().join(format!(
        "shcr-bench-journal-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut configurations = Vec::new();
    if durabilities.contains(&BenchDurability::Journal) {
        configurations.push(("on-journal", true, true));
    }
    configurations.extend([("policy-only", true, false), ("off", false, false)]);
    let mut servers = Vec::new();
    for (label, enforce, audit) in configurations {
        let mut other = settings.clone();
        other.access.enforce = enforce;
        other.access.audit = audit;
        if audit {
            other.audit.durability = Some("journal".into());
            other.audit.journal_dir = Some(journal_dir.clone());
        }
        other.index_dir = None;
        other.port = 0;
        let app = Application::build_with_store(other, store.clone()).await?;
        app.search()
            .wait_fresh(Duration::from_secs(1800))
            .await
            .map_err(|e| anyhow::anyhow!("{label} server's index: {e}"))?;
        let token = clinician(
            &app.dev_issuer().expect("dev issuer"),
            app.issuer(),
            &settings.auth.audience,
            &org,
        )?;
        let base = app.base_url();
        let (handle, search) = (app.handle(), app.search());
        let running = tokio::spawn(app.run_until_stopped());
        servers.push((label, base, token, handle, search, running));
    }

    let on_token = clinician(&on.issuer, &on.issuer_url, &settings.auth.audience, &org)?;
    let mut targets = Vec::new();
    if durabilities.contains(&BenchDurability::Database) {
        targets.push(("on", on.base_url.clone(), on_token));
    }
    targets.extend(servers.iter().map(|s| (s.0, s.1.clone(), s.2.clone())));
    let mut rows = Vec::new();
    for _round in 0..2 {
        for (label, base, token) in &targets {
            load(base, token, &s, clients, warmup).await;
            let audited_before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
                .fetch_one(store.pool())
                .await?;
            let caches_before = cache_counts();
            let meter = CpuMeter::start(store.pool().clone()).await;
            let (reads, searches, errors, elapsed) = load(base, token, &s, clients, seconds).await;
            let caches = cache_counts().since(&caches_before);
            let cpu = meter
                .report_quiet(store.pool(), reads.len() + searches.len())
                .await;
            let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
                .fetch_one(store.pool())
                .await?;
            report(&format!("read {label}"), reads.clone(), elapsed, errors);
            report(&format!("search {label}"), searches.clone(), elapsed, 0);
            println!(
                "         audit rows written {:.0}/s; CPU per request: shcr {:.2} ms (servers and the bench's clients), PostgreSQL {:.2} ms",
                (audited - audited_before) as f64 / elapsed.as_secs_f64(),
                cpu.process_ms,
                cpu.postgres_ms
            );
            println!(
                "         organisation facts cache hit/miss {}/{}, access filter segments hit/miss {}/{}",
                caches.0[0], caches.0[1], caches.0[2], caches.0[3]
            );
            let rate = (reads.len() + searches.len()) as f64 / elapsed.as_secs_f64();
            rows.push((
                *label,
                p99(reads),
                p99(searches),
                cpu.process_ms + cpu.postgres_ms,
                rate,
            ));
        }
    }
    // The same mix at one fixed rate for every configuration, half of what the slowest one
    // sustained above: the latency a clinician sees at a region's normal load rather than at
    // the server's limit.
    let rate = args.access_rate.unwrap_or_else(|| {
        0.5 * rows
            .iter()
            .map(|r| r.4)
            .fold(f64::INFINITY, f64::min)
            .max(2.0)
    });
    println!("access at a fixed rate of {rate:.0} requests/s (open loop):");
    let mut fixed = Vec::new();
    for (label, base, token) in &targets {
        paced(base, token, &s, rate, warmup).await;
        let audit_before = AuditTimes::now();
        let meter = CpuMeter::start(store.pool().clone()).await;
        let (reads, searches, errors) = paced(base, token, &s, rate, seconds).await;
        let cpu = meter
            .report_quiet(store.pool(), reads.len() + searches.len())
            .await;
        let audit_times = AuditTimes::now().since(&audit_before);
        let elapsed = Duration::from_secs(seconds);
        report(
            &format!("read {label} @rate"),
            reads.clone(),
            elapsed,
            errors,
        );
        report(
            &format!("search {label} @rate"),
            searches.clone(),
            elapsed,
            0,
        );
        println!(
            "         CPU per request: shcr {:.2} ms, PostgreSQL {:.2} ms",
            cpu.process_ms, cpu.postgres_ms
        );
        if audit_times.syncs > 0.0 {
            println!(
                "         audit journal: wait per request mean {:.3} ms (p99 ≤ {:.2} ms), write + fdatasync per group mean {:.3} ms (p99 ≤ {:.2} ms), {:.2} rows per group; shipped in {:.0} statements of {:.3} ms mean",
                audit_times.wait_seconds / audit_times.rows * 1e3,
                bucket_quantile(&audit_times.wait_buckets, audit_times.rows, 0.99) * 1e3,
                audit_times.sync_seconds / audit_times.syncs * 1e3,
                bucket_quantile(&audit_times.sync_buckets, audit_times.syncs, 0.99) * 1e3,
                audit_times.rows / audit_times.syncs,
                audit_times.ships,
                audit_times.ship_seconds / audit_times.ships.max(1.0) * 1e3
            );
        } else if audit_times.groups > 0.0 {
            println!(
                "         audit: wait per request mean {:.3} ms (p99 ≤ {:.2} ms), commit per group mean {:.3} ms (p99 ≤ {:.2} ms), {:.2} rows per group",
                audit_times.wait_seconds / audit_times.rows * 1e3,
                bucket_quantile(&audit_times.wait_buckets, audit_times.rows, 0.99) * 1e3,
                audit_times.group_seconds / audit_times.groups * 1e3,
                bucket_quantile(&audit_times.group_buckets, audit_times.groups, 0.99) * 1e3,
                audit_times.rows / audit_times.groups
            );
        }
        fixed.push((*label, p99(reads), p99(searches)));
    }
    if let Some(off) = fixed.iter().find(|r| r.0 == "off") {
        for r in fixed.iter().filter(|r| r.0 != "off") {
            println!(
                "{} vs off at {rate:.0} requests/s: read p99 {:.2} vs {:.2} ms ({:+.0}%), search p99 {:.2} vs {:.2} ms ({:+.0}%)",
                r.0,
                r.1,
                off.1,
                (r.1 / off.1 - 1.0) * 100.0,
                r.2,
                off.2,
                (r.2 / off.2 - 1.0) * 100.0
            );
        }
    }

    for (_, _, _, handle, search, running) in servers {
        handle.stop(true).await;
        running.await??;
        search.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&journal_dir);
    let best = |l: &str, f: fn(&(&str, f64, f64, f64, f64)) -> f64| {
        rows.iter()
            .filter(|r| r.0 == l)
            .map(f)
            .fold(f64::INFINITY, f64::min)
    };
    let (read_off, search_off, cpu_off) = (
        best("off", |r| r.1),
        best("off", |r| r.2),
        best("off", |r| r.3),
    );
    for label in ["on", "on-journal", "policy-only"] {
        if !rows.iter().any(|r| r.0 == label) {
            continue;
        }
        let (read, search, cpu) = (
            best(label, |r| r.1),
            best(label, |r| r.2),
            best(label, |r| r.3),
        );
        println!(
            "{label} vs off (best of two runs each): read p99 {read:.2} vs {read_off:.2} ms ({:+.0}%), search p99 {search:.2} vs {search_off:.2} ms ({:+.0}%), CPU per request {cpu:.2} vs {cpu_off:.2} ms ({:+.0}%)",
            (read / read_off - 1.0) * 100.0,
            (search / search_off - 1.0) * 100.0,
            (cpu / cpu_off - 1.0) * 100.0
        );
    }

    // Audit appends alone: concurrent single-row appends through the chain lock.
    let audit = Audit::new(store.clone());
    let record = AuditRecord {
        interaction: "read".into(),
        action: "R".into(),
        http_status: 200,
        caller_kind: "user".into(),
        caller_id: Some("555000000777".into()),
        role_code: Some("S8000:G8000:R8000".into()),
        org: Some(org.clone()),
        purpose: "TREAT".into(),
        method: "GET".into(),
        path: "/fhir/Observation/bench".into(),
        patients: vec!["bench".into()],
        returned: 1,
        relationship: true,
        ..AuditRecord::default()
    };
    let deadline = Instant::now() + Duration::from_secs(seconds.min(10));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..clients.min(16) {
        let (audit, record) = (audit.clone(), record.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if audit.record(record.clone()).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut appended = 0;
    for w in writers {
        appended += w.await?;
    }
    println!(
        "audit append: {:.0} rows/s ({} concurrent writers, one chained row per transaction)",
        appended as f64 / started.elapsed().as_secs_f64(),
        clients.min(16)
    );

    // Fill to `audit_rows`, then verify the whole chain.
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(store.pool())
        .await?;
    let missing = (audit_rows as i64 - have).max(0) as usize;
    let started = Instant::now();
    let batch = vec![record; 5000];
    let mut left = missing;
    while left > 0 {
        let n = left.min(batch.len());
        audit.record_many(&batch[..n]).await?;
        left -= n;
    }
    if missing > 0 {
        println!(
            "audit bulk append: {missing} rows in {:.1} s ({:.0} rows/s, 5000 per transaction)",
            started.elapsed().as_secs_f64(),
            missing as f64 / started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let v = crate::audit::verify::verify(&store, |_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "audit verify: {} rows in {secs:.1} s ({:.0} rows/s), {}",
        v.rows,
        v.rows as f64 / secs,
        if v.first_bad.is_none() {
            "intact".to_string()
        } else {
            format!("BROKEN: {:?}", v.first_bad)
        }
    );
    Ok(())
}
