//! TEMPORARY: a timeline of the indexer's rounds and of searches' freshness waits, for the
//! searchable-lag investigation (issue 7). Off unless `enable` is called.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn enable() {
    LazyLock::force(&EPOCH);
    ON.store(true, Ordering::SeqCst);
}

pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

pub fn ms() -> f64 {
    EPOCH.elapsed().as_secs_f64() * 1000.0
}

pub fn ms_of(t: Instant) -> f64 {
    t.saturating_duration_since(*EPOCH).as_secs_f64() * 1000.0
}

pub fn push(v: serde_json::Value) {
    if on() {
        LINES.lock().unwrap().push(v.to_string());
    }
}

pub fn take() -> Vec<String> {
    std::mem::take(&mut *LINES.lock().unwrap())
}
