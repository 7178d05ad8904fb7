//! CPU used by this process (per thread kind) and by the PostgreSQL backends of its database
//! during a benchmark phase, per operation. On a shared machine wall-clock rates move with other
//! people's load; CPU per operation does not, so before/after comparisons use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;

/// Clock ticks per second of `/proc/*/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU ticks and the name of a process or thread, from `/proc/.../stat`.
fn proc_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// What a thread of this process does, from its name.
fn thread_kind(name: &str) -> &'static str {
    if name.starts_with("merge_thread") {
        "tantivy merge"
    } else if name.starts_with("thrd-tantivy-i") {
        // Tantivy starts new indexing threads after every commit: most of their time shows
        // under "ended threads".
        "tantivy indexing"
    } else if name.starts_with("segment_update") {
        "tantivy commit"
    } else if name.starts_with("tokio-r") {
        // Async workers and the blocking pool (document building, commits).
        "tokio"
    } else if name.starts_with("actix") {
        "actix"
    } else {
        "other"
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum CpuKey {
    Thread(u32),
    Backend(u32),
}

#[derive(Default)]
struct CpuSamples {
    process_start: u64,
    process_last: u64,
    start: HashMap<CpuKey, u64>,
    last: HashMap<CpuKey, (String, u64)>,
}

/// CPU used during a phase by this process (server, publisher and receiver: the publisher's
/// share is the same for every build) and by the PostgreSQL backends serving the bench's
/// database (shared PostgreSQL processes such as the WAL writer are not counted). Other
/// sessions on a shared machine do not count, so the figures compare across loads where
/// messages/s do not. Samples twice a second: a thread or backend that ends between samples
/// loses its last half second (the process total does not).
pub struct CpuMeter {
    samples: Arc<Mutex<CpuSamples>>,
    task: tokio::task::JoinHandle<()>,
}

impl CpuMeter {
    async fn sample(pool: &PgPool, samples: &Mutex<CpuSamples>, first: bool) {
        let mut seen: Vec<(CpuKey, String, u64)> = Vec::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Some((name, ticks)) = proc_ticks(&format!("/proc/self/task/{tid}/stat")) {
                    seen.push((CpuKey::Thread(tid), name, ticks));
                }
            }
        }
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        for pid in backends {
            if let Some((name, ticks)) = proc_ticks(&format!("/proc/{pid}/stat")) {
                seen.push((CpuKey::Backend(pid as u32), name, ticks));
            }
        }
        let process = proc_ticks("/proc/self/stat").map_or(0, |(_, t)| t);
        let mut s = samples.lock().unwrap();
        if first {
            s.process_start = process;
        }
        s.process_last = process;
        for (key, name, ticks) in seen {
            if first {
                s.start.insert(key, ticks);
            }
            s.last.insert(key, (name, ticks));
        }
    }

    pub async fn start(pool: PgPool) -> CpuMeter {
        let samples = Arc::new(Mutex::new(CpuSamples::default()));
        Self::sample(&pool, &samples, true).await;
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Self::sample(&pool, &shared, false).await;
            }
        });
        CpuMeter { samples, task }
    }

    /// Takes a last sample and prints CPU seconds and milliseconds per message.
    pub async fn report(self, pool: &PgPool, what: &str, messages: usize) {
        let split = self.report_quiet(pool, messages).await;
        println!(
            "  CPU, {what}: shcr process {:.1}s = {:.2} ms/message, PostgreSQL backends {:.1}s = {:.2} ms/message",
            split.process_seconds, split.process_ms, split.postgres_seconds, split.postgres_ms,
        );
        println!("    shcr ms/message by thread: {}", split.by_thread);
    }

    /// Takes a last sample and returns CPU per operation, printing nothing.
    pub async fn report_quiet(self, pool: &PgPool, operations: usize) -> CpuSplit {
        self.task.abort();
        Self::sample(pool, &self.samples, false).await;
        let s = self.samples.lock().unwrap();
        let mut threads: std::collections::BTreeMap<&str, u64> = Default::default();
        let mut postgres = 0;
        for (key, (name, last)) in &s.last {
            let used = last - s.start.get(key).copied().unwrap_or(0).min(*last);
            match key {
                CpuKey::Thread(_) => *threads.entry(thread_kind(name)).or_default() += used,
                CpuKey::Backend(_) => postgres += used,
            }
        }
        let process = s.process_last - s.process_start;
        let per = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1000.0 / operations.max(1) as f64;
        let live: u64 = threads.values().sum();
        let by_thread: Vec<String> = threads
            .iter()
            .map(|(k, t)| format!("{k} {:.2}", per(*t)))
            .chain(std::iter::once(format!(
                "ended threads {:.2}",
                per(process.saturating_sub(live))
            )))
            .collect();
        CpuSplit {
            process_seconds: process as f64 / TICKS_PER_SECOND,
            process_ms: per(process),
            postgres_seconds: postgres as f64 / TICKS_PER_SECOND,
            postgres_ms: per(postgres),
            by_thread: by_thread.join(", "),
        }
    }
}

/// CPU of a phase: totals and milliseconds per operation.
pub struct CpuSplit {
    pub process_seconds: f64,
    pub process_ms: f64,
    pub postgres_seconds: f64,
    pub postgres_ms: f64,
    pub by_thread: String,
}
