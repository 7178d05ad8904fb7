//! TEMPORARY: time spent per linking phase (nanoseconds), for profiling.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub static T: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
pub const NAMES: [&str; 9] = [
    "current+nonmatch", "settle (delta)", "overlay cands", "score+decide", "write_pending",
    "persons heads", "persons members+json", "persons tx.write", "prefetch (unlocked)",
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
