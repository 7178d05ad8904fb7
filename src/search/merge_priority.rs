//! Runs tantivy's segment merges at a lower CPU priority than the requests.
//!
//! After a bulk load the index merges its segments for tens of seconds on one core; on a
//! 2-core server the merge threads then take CPU from the searches as an equal, and the
//! 1M-resource search bench's p99 moved with whether merges were still running (38.6 ms with
//! them done, 55.2 ms with 30 segments still merging). Merging only has to finish eventually;
//! searches and the indexing threads (commit→searchable) have to answer now. tantivy gives no
//! hook on its merge pool, so the threads are found by the name it gives them.

/// Nice value of the merge threads: at 10 the kernel gives a busy merge thread about a tenth of
/// the CPU of a busy thread at 0, and all of an idle core.
const MERGE_NICE: libc::c_int = 10;

/// Threads of this process named `merge_thread_*`: tantivy's merge pools.
pub fn merge_threads() -> Vec<libc::id_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("merge_thread"))
        })
        .filter_map(|task| task.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Runs `create` (which makes an index writer) and lowers the priority of the merge threads
/// it started. A thread names itself once it runs, so the new pool is awaited until `pool`
/// threads carry the name (at most a second; they start at once unless the machine is
/// saturated). Returns what `create` returned.
pub fn with_lowered_merge_threads<T>(pool: usize, create: impl FnOnce() -> T) -> T {
    let before = merge_threads();
    let created = create();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut lowered = Vec::new();
    loop {
        for tid in merge_threads() {
            if before.contains(&tid) || lowered.contains(&tid) {
                continue;
            }
            // SAFETY: setpriority takes plain integers; on Linux PRIO_PROCESS with a thread
            // id sets that one thread's nice value (raising it needs no privilege).
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, MERGE_NICE) } == 0 {
                lowered.push(tid);
            }
        }
        if lowered.len() >= pool || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    created
}

/// The nice value of thread `tid` of this process.
#[cfg(test)]
pub(crate) fn nice_of_thread(tid: libc::id_t) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')';
    // nice is field 19 of stat, the 17th after the name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(16)?.parse().ok()
}
