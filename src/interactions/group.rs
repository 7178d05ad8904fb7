//! Group commit: several independent units (queued messages) written in one transaction, so
//! the group pays one commit — one WAL flush, the dominant cost of a small write — instead of
//! one per unit.
//!
//! Each unit stays all-or-nothing on its own: it runs under a savepoint, and a unit that fails
//! is rolled back to that savepoint and reported alone while the others go on and commit. A
//! result is final only once the commit succeeded: if the commit fails, every unit staged in
//! that transaction reports the failure (transient), so nothing is ever reported as written
//! that was not committed.
//!
//! Locking: before the first unit, the group takes the advisory locks of every unit (the
//! conditional criteria and the identity blocking keys of the Patients it writes) in one
//! sorted statement, so two groups overlapping in any key run one after the other instead of
//! deadlocking half-way. Anything still lost to a concurrent writer (a `Conflict`) commits
//! what the group has done so far, releasing its locks, and retries that unit in a fresh
//! transaction.
//!
//! Reads once per group: PostgreSQL's cost per message is mostly fixed per-statement overhead,
//! so with the locks taken, each transaction reads the answers to every unit's criteria and
//! locks the heads they name in two statements; with no savepoints, the hook does its part for
//! every unit in one statement before the first unit (`WriteHook::on_group_locked`) and one
//! after the last (`WriteHook::on_group_staged`), and the units' versions and access facts
//! are written after the last unit in one statement each. A unit's versions wait in the
//! transaction (`WriteTx::write_deferred`) and go out before any statement that follows
//! them, so a unit that must read (its criteria, a head an earlier unit wrote) sends the
//! versions before it first, and sees what it would see had they been written at once. A unit uses what was read for it
//! unless an earlier unit of the same transaction wrote something it depends on — a resource
//! carrying an identifier one of its queries matches, or one its queries matched, or a head it
//! locks: then it reads its own, as it would alone.

use std::collections::{BTreeSet, HashSet};

use crate::store::{Author, IdentifierQuery, StoreError, WriteTx};

use super::Repository;
use super::WriteHook;
use super::error::Error;
use super::transaction::{
    CheckedUnit, EntryAction, EntryFailure, EntryOutcome, EntryRequest, GroupHeads, Known,
    Prefetched, PrefetchedHeads, Staged, Written,
};

/// One unit of a group: its entries, who writes them, and the hook that takes part.
pub struct Unit<'a, H> {
    pub entries: &'a [EntryRequest],
    pub author: &'a Author,
    pub hook: &'a mut H,
}

/// The result of a unit, as `execute_with_hook` reports it for a unit on its own.
pub type UnitResult = Result<Option<Vec<EntryOutcome>>, EntryFailure>;

/// Attempts per unit when it loses a race with a concurrent writer (as `execute_with_hook`).
const ATTEMPTS: usize = 3;

fn failed(what: &str, e: &StoreError) -> EntryFailure {
    tracing::warn!(error = %e, "{what}");
    EntryFailure {
        index: None,
        error: Error::Store(StoreError::Database(sqlx::Error::Protocol(format!(
            "{what}: {e}"
        )))),
    }
}

fn is_conflict(f: &EntryFailure) -> bool {
    matches!(f.error, Error::Store(StoreError::Conflict(_)))
}

/// Whether a unit's outcome ends the transaction early (a lost race: commit, then retry).
fn is_conflict_result(outcome: &Result<Option<Staged>, EntryFailure>) -> bool {
    matches!(outcome, Err(f) if is_conflict(f))
}

/// The advisory lock keys a unit will take: criteria, then the Patients' blocking keys.
fn lock_keys(checked: &CheckedUnit, entries: &[EntryRequest]) -> Vec<i64> {
    let mut keys = crate::store::criteria_lock_keys(&checked.identifier_queries());
    for e in entries.iter().filter(|e| e.resource_type == "Patient") {
        if let EntryAction::Create { resource, .. } | EntryAction::Update { resource, .. } =
            &e.action
        {
            keys.extend(crate::identity::link::patient_lock_keys(resource));
        }
    }
    keys
}

/// Resource types written outside the units' own versions (identity's Persons, every write's
/// Provenance): their queries are never prefetched, since `Staged::writes` does not show them.
const NOT_PREFETCHED: &[&str] = &["Person", "Provenance"];

/// What the units staged so far in a transaction wrote: enough to tell whether an identifier
/// query prefetched before them could now answer differently.
#[derive(Default)]
struct WrittenSoFar {
    /// `(resource type, system, value)` of every identifier a written version carries.
    identifiers: Vec<(String, String, String)>,
    /// `(resource type, id)` of every resource written (updated, deleted).
    resources: HashSet<(String, String)>,
}

impl WrittenSoFar {
    fn add(&mut self, writes: &[Written]) {
        for w in writes {
            self.resources
                .insert((w.resource_type.clone(), w.id.clone()));
            for (system, value) in &w.identifiers {
                self.identifiers
                    .push((w.resource_type.clone(), system.clone(), value.clone()));
            }
        }
    }

    /// Whether the prefetched answer to every query still holds: no resource written since
    /// carries an identifier the query matches (it would now match), and none of the
    /// resources it matched was written since (it may no longer match).
    fn leaves(&self, queries: &[IdentifierQuery], answers: &Prefetched) -> bool {
        queries.iter().all(|q| {
            let Some(ids) = answers.get(q) else {
                return false;
            };
            let gained = self.identifiers.iter().any(|(t, s, v)| {
                *t == q.resource_type
                    && q.system.as_ref().is_none_or(|qs| qs == s)
                    && q.value.as_ref().is_none_or(|qv| qv == v)
            });
            let lost = ids.iter().any(|id| {
                self.resources
                    .contains(&(q.resource_type.clone(), id.clone()))
            });
            !gained && !lost
        })
    }
}

/// Reads the answers to the identifier queries of every unit at once, under the group's
/// advisory locks.
async fn prefetch(
    tx: &mut WriteTx,
    queries: impl Iterator<Item = &IdentifierQuery>,
) -> Result<Prefetched, StoreError> {
    let queries: Vec<IdentifierQuery> = queries
        .filter(|q| !NOT_PREFETCHED.contains(&q.resource_type.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let found = tx.find_by_identifier(&queries).await?;
    Ok(queries.into_iter().zip(found).collect())
}

async fn savepoint(tx: &mut WriteTx, sql: &'static str) -> Result<(), StoreError> {
    sqlx::raw_sql(sql).execute(tx.connection().await?).await?;
    Ok(())
}

impl Repository {
    /// Applies every unit, each atomically, committing them together (see the module
    /// documentation). Results are in unit order; `Ok(None)` means the unit's hook aborted.
    pub async fn execute_group<H: WriteHook>(
        &self,
        units: &mut [Unit<'_, H>],
        in_bundle: bool,
    ) -> Vec<UnitResult> {
        let n = units.len();
        let mut results: Vec<Option<UnitResult>> = (0..n).map(|_| None).collect();
        let mut checked: Vec<Option<CheckedUnit>> = Vec::with_capacity(n);
        for (i, u) in units.iter().enumerate() {
            match Self::check_unit(u.entries, u.author) {
                Ok(c) => checked.push(Some(c)),
                Err(e) => {
                    results[i] = Some(Err(e));
                    checked.push(None);
                }
            }
        }
        let queries: Vec<Vec<IdentifierQuery>> = checked
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|c| c.identifier_queries())
                    .unwrap_or_default()
            })
            .collect();
        let mut attempts = vec![0usize; n];
        // Optimistic first: no savepoint per unit while every unit succeeds (two fewer
        // statements per unit for PostgreSQL, one fewer round trip). The first unit that does
        // not stage cleanly (fails, aborts, or loses a race) rolls the whole transaction back,
        // and the units are applied again, each under its own savepoint, as below.
        let mut optimistic = true;
        let mut next = 0;
        while next < n {
            if results[next].is_some() {
                next += 1;
                continue;
            }
            let mut tx = match self.store.begin_group_write().await {
                Ok(tx) => tx,
                Err(e) => {
                    for r in results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(failed("no transaction for a group of messages", &e)));
                    }
                    break;
                }
            };
            let keys: Vec<i64> = (next..n)
                .filter(|&i| results[i].is_none())
                .filter_map(|i| Some(lock_keys(checked[i].as_ref()?, units[i].entries)))
                .flatten()
                .collect();
            if let Err(e) = tx.lock_for_transaction(keys).await {
                for r in results[next..].iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(failed("locking a group of messages", &e)));
                }
                break;
            }
            // Every unit's criteria answered in one statement, now that their locks are held;
            // a unit uses the answers only while no earlier unit of this transaction wrote
            // something they could depend on (`WrittenSoFar::leaves`).
            // Then the heads every unit will lock, given those answers, in one statement too
            // (a unit whose answers change before it runs locks its own, as does one whose
            // heads an earlier unit wrote).
            let read = async {
                let answers = prefetch(
                    &mut tx,
                    (next..n)
                        .filter(|&i| results[i].is_none())
                        .flat_map(|i| queries[i].iter()),
                )
                .await?;
                let asked: HashSet<(String, String)> = (next..n)
                    .filter(|&i| results[i].is_none())
                    .filter_map(|i| checked[i].as_ref()?.head_keys(units[i].entries, &answers))
                    .flatten()
                    .collect();
                let keys: Vec<(String, String)> = asked.iter().cloned().collect();
                let found = tx.lock_heads(&keys).await?;
                Ok::<_, StoreError>((answers, PrefetchedHeads { asked, found }))
            };
            let (answers, heads) = match read.await {
                Ok(read) => read,
                Err(e) => {
                    for r in results[next..].iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(failed("reading a group's criteria", &e)));
                    }
                    break;
                }
            };
            let mut so_far = WrittenSoFar::default();
            // Units staged in this transaction, waiting for its commit (`None`: the hook
            // aborted; reported only once the commit shows the transaction was sound).
            let mut staged: Vec<(usize, Option<Staged>)> = Vec::new();
            // Set when the transaction cannot go on (the connection failed).
            let mut broken: Option<StoreError> = None;
            // Whether the next unit's savepoint is already set (the previous unit's end set it
            // in the same round trip).
            let mut opened = false;
            // Optimistic only with more than one unit left: a single unit needs no savepoint to
            // be rolled back alone, and is retried as before if it fails.
            let first = next;
            let optimistic_tx = optimistic
                && (next..n)
                    .filter(|&j| results[j].is_none() && checked[j].is_some())
                    .nth(1)
                    .is_some();
            // Identity links for every unit at once after the last, when no unit reads what
            // linking writes (Persons, their Provenance) or deletes a Patient.
            let defer_links = optimistic_tx
                && (next..n).filter(|&j| results[j].is_none()).all(|j| {
                    checked[j]
                        .as_ref()
                        .is_none_or(|c| c.links_deferrable(units[j].entries))
                });
            let mut fell_back = false;
            if optimistic_tx {
                let mut hooks: Vec<&mut H> = units
                    .iter_mut()
                    .enumerate()
                    .filter(|&(j, _)| j >= next && results[j].is_none() && checked[j].is_some())
                    .map(|(_, u)| &mut *u.hook)
                    .collect();
                if let Err(e) = H::on_group_locked(&mut tx, &mut hooks).await {
                    tracing::warn!(error = %e, "a group's hooks could not start; running its units one by one");
                    drop(hooks);
                    for u in units.iter_mut() {
                        u.hook.forget_group();
                    }
                    drop(tx);
                    optimistic = false;
                    continue;
                }
            }
            while next < n {
                let i = next;
                let Some(c) = checked[i].as_ref().filter(|_| results[i].is_none()) else {
                    next += 1;
                    continue;
                };
                attempts[i] += 1;
                let known = Known {
                    answers: so_far.leaves(&queries[i], &answers).then_some(&answers),
                    heads: Some(GroupHeads {
                        asked: &heads.asked,
                        found: &heads.found,
                        written: &so_far.resources,
                    }),
                    group_writes: optimistic_tx,
                    defer_links,
                };
                if optimistic_tx {
                    let u = &mut units[i];
                    match self
                        .stage(&mut tx, u.entries, u.author, in_bundle, u.hook, c, known)
                        .await
                    {
                        Ok(Some(s)) => {
                            so_far.add(&s.writes);
                            staged.push((i, Some(s)));
                            next += 1;
                            continue;
                        }
                        _ => {
                            // Nothing of this transaction is kept: its units are not counted
                            // as attempts, and run again under savepoints.
                            for j in first..=i {
                                if results[j].is_none() && checked[j].is_some() {
                                    attempts[j] -= 1;
                                }
                            }
                            fell_back = true;
                            break;
                        }
                    }
                }
                if !opened && let Err(e) = savepoint(&mut tx, "SAVEPOINT unit").await {
                    if attempts[i] >= ATTEMPTS {
                        results[i] = Some(Err(failed("a message could not be started", &e)));
                        next += 1;
                    }
                    broken = Some(e);
                    break;
                }
                let u = &mut units[i];
                let outcome = self
                    .stage(&mut tx, u.entries, u.author, in_bundle, u.hook, c, known)
                    .await;
                let keep = matches!(outcome, Ok(Some(_)));
                // A unit that ends well (or fails alone) is followed at once by the next
                // unit's savepoint, when one is waiting: one round trip between units, not
                // two. A savepoint left unused at commit costs nothing.
                opened = (i + 1..n).any(|j| results[j].is_none() && checked[j].is_some())
                    && (keep || !is_conflict_result(&outcome));
                let end = match (keep, opened) {
                    (true, false) => "RELEASE SAVEPOINT unit",
                    (true, true) => "RELEASE SAVEPOINT unit; SAVEPOINT unit",
                    (false, false) => "ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit",
                    (false, true) => {
                        "ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit; SAVEPOINT unit"
                    }
                };
                if let Err(e) = savepoint(&mut tx, end).await {
                    // The unit's work is lost with the transaction: report its own failure,
                    // or try it again in a new transaction (a bounded number of times).
                    match outcome {
                        Err(f) => results[i] = Some(Err(f)),
                        Ok(_) if attempts[i] >= ATTEMPTS => {
                            results[i] = Some(Err(failed("a message could not be finished", &e)));
                        }
                        Ok(_) => {}
                    }
                    if results[i].is_some() {
                        next += 1;
                    }
                    broken = Some(e);
                    break;
                }
                match outcome {
                    Ok(s) => {
                        if let Some(s) = &s {
                            so_far.add(&s.writes);
                        }
                        staged.push((i, s));
                        next += 1;
                    }
                    Err(f) if is_conflict(&f) && attempts[i] < ATTEMPTS => {
                        // Lost a race (or a deadlock): commit what this transaction holds so
                        // the other writer can finish, then retry the unit in a fresh one.
                        break;
                    }
                    Err(f) => {
                        results[i] = Some(Err(f));
                        next += 1;
                    }
                }
            }
            if optimistic_tx && !fell_back {
                // Every unit staged: their versions, waiting since each unit's end unless a
                // later statement sent them, in one statement, so that a failure here runs
                // the units again one by one like any other group statement's.
                if let Err(e) = tx.flush().await {
                    tracing::warn!(error = %e, "a group's versions could not be written; running its units one by one");
                    for (j, _) in &staged {
                        attempts[*j] -= 1;
                    }
                    fell_back = true;
                }
            }
            if defer_links && !fell_back {
                // Every unit staged: their Patients linked in unit order, as each unit would
                // have after its own versions.
                let linked = {
                    let parts: Vec<crate::identity::link::LinkUnit> = staged
                        .iter()
                        .filter_map(|(j, s)| {
                            let l = s.as_ref()?.links.as_ref()?;
                            Some(crate::identity::link::LinkUnit {
                                versions: &l.versions,
                                author: units[*j].author,
                                now: l.now,
                            })
                        })
                        .collect();
                    crate::identity::link::link_units(&mut tx, &parts).await
                };
                if let Err(e) = linked {
                    tracing::warn!(error = %e, "a group's identity links could not be written; running its units one by one");
                    for (j, _) in &staged {
                        attempts[*j] -= 1;
                    }
                    fell_back = true;
                }
            }
            if optimistic_tx && !fell_back {
                // Every unit staged: the access facts and what the hooks left for the group
                // are written for every unit at once.
                let mut facts = crate::access::facts::PendingFacts::default();
                for (_, s) in staged.iter_mut() {
                    if let Some(f) = s.as_mut().and_then(|s| s.facts.take()) {
                        facts.append(f);
                    }
                }
                if let Err(e) = facts.write(&mut tx).await {
                    tracing::warn!(error = %e, "a group's access facts could not be written; running its units one by one");
                    for (j, _) in &staged {
                        attempts[*j] -= 1;
                    }
                    fell_back = true;
                }
            }
            if optimistic_tx && !fell_back {
                let mut hooks: Vec<&mut H> = units
                    .iter_mut()
                    .enumerate()
                    .filter(|(j, _)| staged.iter().any(|(k, s)| k == j && s.is_some()))
                    .map(|(_, u)| &mut *u.hook)
                    .collect();
                if let Err(e) = H::on_group_staged(&mut tx, &mut hooks).await {
                    tracing::warn!(error = %e, "a group's hooks could not finish; running its units one by one");
                    for (j, _) in &staged {
                        attempts[*j] -= 1;
                    }
                    fell_back = true;
                }
            }
            if fell_back {
                // Dropping the transaction rolls it back, with whatever the hooks did for the
                // whole group.
                drop(tx);
                for u in units.iter_mut() {
                    u.hook.forget_group();
                }
                optimistic = false;
                next = first;
                continue;
            }
            let commit = match broken {
                Some(e) => Err(e),
                None if self.rollback => {
                    drop(tx);
                    Ok(())
                }
                None => tx.commit().await,
            };
            match commit {
                Ok(()) => {
                    for (i, s) in staged {
                        results[i] = Some(match s {
                            Some(s) => self.finish(units[i].entries, s).await.map(Some),
                            None => Ok(None),
                        });
                    }
                }
                Err(e) => {
                    for (i, _) in staged {
                        results[i] = Some(Err(failed("a group of messages was not committed", &e)));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every unit decided"))
            .collect()
    }
}
