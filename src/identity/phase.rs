//! TEMPORARY: time spent per linking phase (nanoseconds), for profiling.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub static T: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
pub const NAMES: [&str; 8] = [
    "current+nonmatch", "candidates sql", "decode", "score+decide", "write_pending",
    "persons heads", "persons members+json", "persons tx.write",
];

pub fn add(i: usize, since: Instant) -> Instant {
    let now = Instant::now();
    T[i].fetch_add((now - since).as_nanos() as u64, Ordering::Relaxed);
    now
}

pub fn report() {
    for (i, n) in NAMES.iter().enumerate() {
        println!("phase {n}: {:.2} s", T[i].load(Ordering::Relaxed) as f64 / 1e9);
    }
}
