//! The write engine: every create, update and delete — single or in a Bundle — runs here as one
//! atomic unit: check, resolve conditions and local references, lock, version, write, commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::fhir::id::new_id;
use crate::fhir::instant::now_millis;
use crate::fhir::outcome::{Issue, IssueType};
use crate::fhir::reference::{ReferenceKind, classify};
use crate::search::params::Registry;
use crate::store::{
    Author, Head, IdentifierQuery, LockedHead, NewVersion, Operation, VersionRow, WriteTx,
};

use super::Repository;
use super::criteria::Criteria;
use super::error::Error;
use super::prepare::{check_resource, content_and_hash, identifiers, resource_id, stamp};
use super::references::{conditional_references, rewrite};

#[derive(Debug, Clone)]
pub enum Target {
    Id(String),
    /// Conditional update/delete: search criteria (query string without the type).
    Criteria(String),
}

#[derive(Debug, Clone)]
pub enum EntryAction {
    Create {
        resource: Value,
        if_none_exist: Option<String>,
    },
    Update {
        target: Target,
        resource: Value,
        if_match: Option<i64>,
    },
    Delete {
        target: Target,
        if_match: Option<i64>,
    },
    Read {
        id: String,
        version: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct EntryRequest {
    pub resource_type: String,
    /// `Bundle.entry.fullUrl`, used to resolve references between entries.
    pub full_url: Option<String>,
    pub action: EntryAction,
}

#[derive(Debug, Clone)]
pub struct EntryOutcome {
    pub status: u16,
    pub resource_type: String,
    pub id: Option<String>,
    pub version_id: Option<i64>,
    pub last_updated: Option<OffsetDateTime>,
    /// JSON text of the resource as stored, for create/update/read and matched conditional creates.
    pub content: Option<String>,
    /// What happened, for `Prefer: return=OperationOutcome` and delete responses.
    pub message: String,
    /// Whether a new version was written (false for reads and conditional matches).
    pub written: bool,
}

impl EntryOutcome {
    fn from_row(status: u16, row: VersionRow, message: String) -> EntryOutcome {
        EntryOutcome {
            status,
            resource_type: row.resource_type,
            id: Some(row.id),
            version_id: Some(row.version_id),
            last_updated: Some(row.last_updated),
            content: row.content,
            message,
            written: false,
        }
    }
}

/// A failure at one entry (index into the request list) or of the whole unit.
#[derive(Debug)]
pub struct EntryFailure {
    pub index: Option<usize>,
    pub error: Error,
}

impl From<crate::store::StoreError> for EntryFailure {
    fn from(e: crate::store::StoreError) -> Self {
        EntryFailure {
            index: None,
            error: e.into(),
        }
    }
}

fn at(index: usize) -> impl Fn(Error) -> EntryFailure {
    move |error| EntryFailure {
        index: Some(index),
        error,
    }
}

/// What a write hook decides once the transaction holds its locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookDecision {
    /// Write every entry except those listed: each held entry keeps its resource as it stands
    /// (its `fullUrl` still resolves to the matched resource, so other entries can refer to it).
    Proceed { hold: HashSet<usize> },
    /// Write nothing and roll back; the hook knows why (e.g. a repeated idempotency key).
    Abort,
}

/// What an entry's conditional criteria matched (exactly one resource), read under its head's
/// row lock.
#[derive(Debug, Clone)]
pub struct Matched {
    pub id: String,
    /// The organisation that wrote its current version.
    pub author_org: Option<String>,
}

/// Lets another module take part in the engine's write transaction without writing resource
/// tables itself: `events` records idempotency keys, source timestamps and stale events in the
/// same transaction as the versions they concern, so a crash can never separate them.
///
/// Both calls run inside the transaction and may write the hook's own tables through
/// `WriteTx::connection`. A lost race on a new resource retries the whole unit, so a hook must
/// expect `on_locked` again after a rollback and keep no state from the earlier attempt.
pub trait WriteHook: Send {
    /// After conditional criteria are resolved under their advisory locks (concurrent writers
    /// of the same business identifiers wait here) and the heads of the resources the entries
    /// replace are locked, before anything is written. `matched[i]` is the resource entry
    /// `i`'s criteria matched, when they matched exactly one. By default every entry is
    /// written.
    fn on_locked(
        &mut self,
        _tx: &mut WriteTx,
        _matched: &[Option<Matched>],
    ) -> impl std::future::Future<Output = Result<HookDecision, Error>> + Send {
        async {
            Ok(HookDecision::Proceed {
                hold: HashSet::new(),
            })
        }
    }

    /// Once per group transaction that runs its units without savepoints (`execute_group`),
    /// after the group's advisory locks are taken and before the first unit: a hook may do
    /// for every unit at once, in one statement, what `on_locked` would do for each, and
    /// leave each hook its part to use in `on_locked`. The transaction is all-or-nothing (a
    /// unit that does not go well rolls all of it back), so rows written here for a unit are
    /// never kept without that unit. By default nothing is done.
    fn on_group_locked(
        _tx: &mut WriteTx,
        _hooks: &mut [&mut Self],
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
    {
        async { Ok(()) }
    }

    /// After every unit of such a group staged (each hook's `before_commit` ran), before the
    /// commit: a hook may write here, in one statement for all, rows its `before_commit`
    /// left for the group. A failure rolls the whole transaction back, and the units run
    /// again each under its own savepoint (without `on_group_locked`). By default nothing is
    /// done.
    fn on_group_staged(
        _tx: &mut WriteTx,
        _hooks: &mut [&mut Self],
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
    {
        async { Ok(()) }
    }

    /// The transaction `on_group_locked` ran in was rolled back: forget what it left (the
    /// unit runs again on its own).
    fn forget_group(&mut self) {}

    /// After every version is written, before commit. `outcomes` is in entry order; entries
    /// written nothing (held, matched conditional creates) carry no version yet.
    /// By default nothing is added to the transaction.
    fn before_commit(
        &mut self,
        _tx: &mut WriteTx,
        _outcomes: &[EntryOutcome],
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
}

/// The engine without a hook.
pub struct NoHook;

impl WriteHook for NoHook {}

/// Where each entry stands once conditions are resolved.
enum Plan {
    Create {
        id: String,
        resource: Value,
    },
    /// A conditional create that matched: nothing is written.
    Existing {
        id: String,
    },
    Update {
        id: String,
        resource: Value,
        if_match: Option<i64>,
    },
    Delete {
        id: String,
        if_match: Option<i64>,
    },
    /// A conditional delete with no match.
    NothingToDelete,
    /// Held back by the write hook: nothing is written; the resource stays as it stands.
    Held {
        id: Option<String>,
    },
    Read,
}

/// A unit that passed the checks before the database: its parsed conditions.
pub(crate) struct CheckedUnit {
    entry_criteria: HashMap<usize, Criteria>,
    reference_criteria: HashMap<String, (usize, Criteria)>,
}

impl CheckedUnit {
    /// The heads the unit will lock if `answers` answer its identifier queries; `None` when
    /// they do not answer all, or its criteria name ids (read only in the transaction).
    pub(crate) fn head_keys(
        &self,
        entries: &[EntryRequest],
        answers: &Prefetched,
    ) -> Option<Vec<(String, String)>> {
        let mut matches: HashMap<&Criteria, Vec<String>> = HashMap::new();
        for c in self.entry_criteria.values() {
            if !c.ids.is_empty() {
                return None;
            }
            let mut by_query = HashMap::new();
            for q in c.identifiers.iter().flatten() {
                by_query.insert(q, answers.get(q)?);
            }
            matches.insert(c, narrow(c, &by_query, Vec::new()));
        }
        let matched = |c: &Criteria| matches.get(c).cloned().unwrap_or_default();
        Some(head_keys(entries, &self.entry_criteria, &matched))
    }

    /// Whether the unit's identity links may be written after later units of its group ran:
    /// none of its conditions reads Persons (written by linking) or Provenance (written with
    /// them), and it deletes no Patient (a group that wrote and deleted one links unit by
    /// unit; see `identity::unit::link_records`).
    pub(crate) fn links_deferrable(&self, entries: &[EntryRequest]) -> bool {
        let reads_links = self
            .entry_criteria
            .values()
            .chain(self.reference_criteria.values().map(|(_, c)| c))
            .any(|c| matches!(c.resource_type.as_str(), "Person" | "Provenance"));
        let deletes_patient = entries.iter().any(|e| {
            e.resource_type == "Patient" && matches!(e.action, EntryAction::Delete { .. })
        });
        !reads_links && !deletes_patient
    }

    /// Every identifier query of the unit's conditions (the keys `lock_criteria` locks).
    pub(crate) fn identifier_queries(&self) -> Vec<IdentifierQuery> {
        self.entry_criteria
            .values()
            .chain(self.reference_criteria.values().map(|(_, c)| c))
            .flat_map(|c| c.identifier_queries().cloned())
            .collect()
    }
}

/// A unit written in an open transaction, waiting for the commit.
pub(crate) struct Staged {
    pending: Vec<EntryOutcome>,
    results: Vec<Option<(u16, usize)>>,
    unchanged: HashMap<usize, EntryOutcome>,
    /// Every resource the unit wrote a version of, with the identifiers that version carries.
    pub(crate) writes: Vec<Written>,
    /// Access facts left for the group to write (`Known::group_writes`).
    pub(crate) facts: Option<crate::access::facts::PendingFacts>,
    /// Patient versions left for the group to link (`Known::defer_links`).
    pub(crate) links: Option<DeferredLinks>,
}

/// A unit's Patient versions, linked by its group after the last unit.
pub(crate) struct DeferredLinks {
    pub(crate) versions: Vec<NewVersion>,
    pub(crate) now: OffsetDateTime,
}

/// A version a unit wrote: which resource, and the business identifiers it now carries.
pub(crate) struct Written {
    pub(crate) resource_type: String,
    pub(crate) id: String,
    pub(crate) identifiers: Vec<(String, String)>,
}

/// Answers to identifier queries read once for a group transaction (`execute_group`), for the
/// units no earlier unit of the transaction could have changed them for.
pub(crate) type Prefetched = HashMap<IdentifierQuery, Vec<String>>;

/// Heads locked once for a group transaction (`execute_group`).
pub(crate) struct PrefetchedHeads {
    /// Every head asked for (those that do not exist are not in `found`).
    pub(crate) asked: HashSet<(String, String)>,
    pub(crate) found: HashMap<(String, String), LockedHead>,
}

/// What a group read for a unit before it runs.
#[derive(Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    /// Answers to the unit's identifier queries, when still valid for it.
    pub(crate) answers: Option<&'a Prefetched>,
    pub(crate) heads: Option<GroupHeads<'a>>,
    /// The group writes the unit's versions and access facts with every other unit's, after
    /// the last (only a group that rolls back whole when a unit fails may: no savepoints).
    pub(crate) group_writes: bool,
    /// The group links the unit's Patients with every other unit's, after the last (such a
    /// group, when no unit reads what linking writes: `CheckedUnit::links_deferrable`).
    pub(crate) defer_links: bool,
}

/// The group's locked heads, with the resources earlier units of the transaction wrote (their
/// heads as read are out of date).
#[derive(Clone, Copy)]
pub(crate) struct GroupHeads<'a> {
    pub(crate) asked: &'a HashSet<(String, String)>,
    pub(crate) found: &'a HashMap<(String, String), LockedHead>,
    pub(crate) written: &'a HashSet<(String, String)>,
}

impl Repository {
    /// Runs every entry as one all-or-nothing transaction (a `transaction` Bundle, or a single
    /// REST interaction as a one-entry list). A transaction that lost a race with a concurrent
    /// writer of the same new resource is retried: the retry sees the winner's commit.
    #[tracing::instrument(skip_all, fields(entries = entries.len()))]
    pub async fn execute_atomic(
        &self,
        entries: &[EntryRequest],
        author: &Author,
    ) -> Result<Vec<EntryOutcome>, EntryFailure> {
        self.execute(entries, author, false).await
    }

    /// As `execute_atomic`, for entries of a Bundle: there every `urn:uuid:` reference must name
    /// an entry. Outside a Bundle such a reference is left as the client wrote it.
    pub async fn execute_bundle_entries(
        &self,
        entries: &[EntryRequest],
        author: &Author,
    ) -> Result<Vec<EntryOutcome>, EntryFailure> {
        self.execute(entries, author, true).await
    }

    async fn execute(
        &self,
        entries: &[EntryRequest],
        author: &Author,
        in_bundle: bool,
    ) -> Result<Vec<EntryOutcome>, EntryFailure> {
        let outcomes = self
            .execute_with_hook(entries, author, in_bundle, &mut NoHook)
            .await?;
        Ok(outcomes.expect("NoHook never aborts"))
    }

    /// As `execute_atomic` (or `execute_bundle_entries` when `in_bundle`), with a hook taking
    /// part in the transaction. `None` when the hook aborted: nothing was written.
    pub async fn execute_with_hook<H: WriteHook>(
        &self,
        entries: &[EntryRequest],
        author: &Author,
        in_bundle: bool,
        hook: &mut H,
    ) -> Result<Option<Vec<EntryOutcome>>, EntryFailure> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match self.try_atomic(entries, author, in_bundle, hook).await {
                Err(EntryFailure {
                    error: Error::Store(crate::store::StoreError::Conflict(_)),
                    ..
                }) if attempt < ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    async fn try_atomic<H: WriteHook>(
        &self,
        entries: &[EntryRequest],
        author: &Author,
        in_bundle: bool,
        hook: &mut H,
    ) -> Result<Option<Vec<EntryOutcome>>, EntryFailure> {
        let checked = Self::check_unit(entries, author)?;
        let mut tx = self.store.begin_write().await?;
        let Some(staged) = self
            .stage(
                &mut tx,
                entries,
                author,
                in_bundle,
                hook,
                &checked,
                Known::default(),
            )
            .await?
        else {
            // The hook aborted: dropping the transaction rolls it back.
            return Ok(None);
        };
        if self.rollback {
            // Sandbox: dropping the transaction rolls it back; nothing was stored.
            drop(tx);
        } else {
            tx.commit().await?;
        }
        self.finish(entries, staged).await.map(Some)
    }

    /// Steps 1–2 of a unit, before any database work: every entry checked, every condition
    /// parsed. A unit refused here never touches the database.
    pub(crate) fn check_unit(
        entries: &[EntryRequest],
        author: &Author,
    ) -> Result<CheckedUnit, EntryFailure> {
        // 1. Check every entry before touching the database.
        for (i, entry) in entries.iter().enumerate() {
            Self::check_type(&entry.resource_type).map_err(at(i))?;
            check_ownership(entry, author).map_err(at(i))?;
            match &entry.action {
                EntryAction::Create { resource, .. } => {
                    check_resource(resource, &entry.resource_type).map_err(at(i))?;
                }
                EntryAction::Update {
                    target, resource, ..
                } => {
                    check_resource(resource, &entry.resource_type).map_err(at(i))?;
                    if let Target::Id(id) = target {
                        Self::check_id(id).map_err(at(i))?;
                        match resource_id(resource) {
                            None => {
                                return Err(at(i)(Error::invalid(
                                    IssueType::Required,
                                    format!(
                                        "the resource has no id; an update of {}/{id} must carry id '{id}'",
                                        entry.resource_type
                                    ),
                                )));
                            }
                            Some(body_id) if body_id != id => {
                                return Err(at(i)(Error::invalid(
                                    IssueType::Invalid,
                                    format!(
                                        "the resource id '{body_id}' does not match the id '{id}' in the URL"
                                    ),
                                )));
                            }
                            Some(_) => {}
                        }
                    }
                }
                EntryAction::Delete {
                    target: Target::Id(id),
                    ..
                }
                | EntryAction::Read { id, .. } => Self::check_id(id).map_err(at(i))?,
                EntryAction::Delete { .. } => {}
            }
        }

        // 2. Parse every condition: If-None-Exist, conditional targets, conditional references.
        let mut entry_criteria: HashMap<usize, Criteria> = HashMap::new();
        let mut reference_criteria: HashMap<String, (usize, Criteria)> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let query = match &entry.action {
                EntryAction::Create {
                    if_none_exist: Some(q),
                    ..
                } => Some(q.as_str()),
                EntryAction::Update {
                    target: Target::Criteria(q),
                    ..
                }
                | EntryAction::Delete {
                    target: Target::Criteria(q),
                    ..
                } => Some(q.as_str()),
                _ => None,
            };
            if let Some(query) = query {
                let query = query
                    .strip_prefix(&format!("{}?", entry.resource_type))
                    .unwrap_or(query);
                entry_criteria.insert(
                    i,
                    Criteria::parse(&entry.resource_type, query).map_err(at(i))?,
                );
            }
            if let EntryAction::Create { resource, .. } | EntryAction::Update { resource, .. } =
                &entry.action
            {
                for reference in conditional_references(resource) {
                    if reference_criteria.contains_key(&reference) {
                        continue;
                    }
                    let ReferenceKind::Conditional {
                        resource_type,
                        query,
                    } = classify(&reference)
                    else {
                        continue;
                    };
                    Self::check_type(resource_type).map_err(at(i))?;
                    let criteria = Criteria::parse(resource_type, query).map_err(at(i))?;
                    reference_criteria.insert(reference, (i, criteria));
                }
            }
        }

        Ok(CheckedUnit {
            entry_criteria,
            reference_criteria,
        })
    }

    /// Steps 3–7 of a unit inside `tx`: resolve, lock, version, write, link, record facts, let
    /// the hook add its rows — everything but the commit. `None` when the hook aborted (the
    /// caller rolls back what the unit did).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn stage<H: WriteHook>(
        &self,
        tx: &mut WriteTx,
        entries: &[EntryRequest],
        author: &Author,
        in_bundle: bool,
        hook: &mut H,
        checked: &CheckedUnit,
        known: Known<'_>,
    ) -> Result<Option<Staged>, EntryFailure> {
        let CheckedUnit {
            entry_criteria,
            reference_criteria,
        } = checked;
        // 3. Resolve them under advisory locks, inside the transaction that writes.
        let all: Vec<&Criteria> = entry_criteria
            .values()
            .chain(reference_criteria.values().map(|(_, c)| c))
            .collect();
        let matches = resolve_all(tx, &all, known.answers).await?;
        let matched = |c: &Criteria| matches.get(c).cloned().unwrap_or_default();
        let single_matches: Vec<Option<String>> = (0..entries.len())
            .map(|i| match entry_criteria.get(&i).map(&matched).as_deref() {
                Some([id]) => Some(id.clone()),
                _ => None,
            })
            .collect();

        // Lock the heads of every resource an entry may replace or delete (whether the hook
        // then holds the entry back or not), and read who wrote each: the hook and the
        // ownership check below both need the owner, and reading it with the lock saves a
        // statement each.
        let lock_keys = head_keys(entries, entry_criteria, &matched);
        let heads: HashMap<(String, String), LockedHead> = match known.heads {
            // Locked for the whole group, and no earlier unit of it wrote any of them since.
            Some(group)
                if lock_keys
                    .iter()
                    .all(|k| group.asked.contains(k) && !group.written.contains(k)) =>
            {
                lock_keys
                    .iter()
                    .filter_map(|k| Some((k.clone(), group.found.get(k)?.clone())))
                    .collect()
            }
            _ => tx.lock_heads(&lock_keys).await?,
        };
        let found: Vec<Option<Matched>> = entries
            .iter()
            .zip(&single_matches)
            .map(|(e, m)| {
                let id = m.as_ref()?;
                Some(Matched {
                    id: id.clone(),
                    author_org: heads
                        .get(&(e.resource_type.clone(), id.clone()))
                        .and_then(|h| h.author_org.clone()),
                })
            })
            .collect();
        let hold = match hook
            .on_locked(tx, &found)
            .await
            .map_err(|error| EntryFailure { index: None, error })?
        {
            HookDecision::Proceed { hold } => hold,
            // The caller rolls back what the unit did.
            HookDecision::Abort => return Ok(None),
        };

        // 4. Decide what each entry does.
        let mut plans: Vec<Plan> = Vec::with_capacity(entries.len());
        let mut local_refs: HashMap<String, String> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let criteria_matches = entry_criteria.get(&i).map(&matched);
            let too_many = |n: usize| {
                at(i)(Error::PreconditionFailed(format!(
                    "the conditional criteria matched {n} {} resources; they must select at most one",
                    entry.resource_type
                )))
            };
            let plan = match &entry.action {
                _ if hold.contains(&i) => Plan::Held {
                    id: match &entry.action {
                        EntryAction::Update {
                            target: Target::Id(id),
                            ..
                        }
                        | EntryAction::Delete {
                            target: Target::Id(id),
                            ..
                        } => Some(id.clone()),
                        _ => single_matches[i].clone(),
                    },
                },
                EntryAction::Create { resource, .. } => match criteria_matches.as_deref() {
                    Some([id]) => Plan::Existing { id: id.clone() },
                    Some(m) if m.len() > 1 => return Err(too_many(m.len())),
                    _ => Plan::Create {
                        id: new_id(),
                        resource: resource.clone(),
                    },
                },
                EntryAction::Update {
                    target,
                    resource,
                    if_match,
                } => {
                    let id = match (target, criteria_matches.as_deref()) {
                        (Target::Id(id), _) => id.clone(),
                        (Target::Criteria(_), Some([id])) => {
                            if let Some(body_id) = resource_id(resource)
                                && body_id != id
                            {
                                return Err(at(i)(Error::invalid(
                                    IssueType::Invalid,
                                    format!(
                                        "the criteria matched {}/{id} but the resource carries id '{body_id}'",
                                        entry.resource_type
                                    ),
                                )));
                            }
                            id.clone()
                        }
                        (Target::Criteria(_), Some(m)) if m.len() > 1 => {
                            return Err(too_many(m.len()));
                        }
                        // No match: create, with the client's id if it gave one.
                        (Target::Criteria(_), _) => resource_id(resource)
                            .map(str::to_string)
                            .unwrap_or_else(new_id),
                    };
                    Plan::Update {
                        id,
                        resource: resource.clone(),
                        if_match: *if_match,
                    }
                }
                EntryAction::Delete { target, if_match } => {
                    match (target, criteria_matches.as_deref()) {
                        (Target::Id(id), _) => Plan::Delete {
                            id: id.clone(),
                            if_match: *if_match,
                        },
                        (Target::Criteria(_), Some([id])) => Plan::Delete {
                            id: id.clone(),
                            if_match: *if_match,
                        },
                        (Target::Criteria(_), Some(m)) if m.len() > 1 => {
                            return Err(too_many(m.len()));
                        }
                        (Target::Criteria(_), _) => Plan::NothingToDelete,
                    }
                }
                EntryAction::Read { .. } => Plan::Read,
            };
            if let Some(full_url) = &entry.full_url {
                let target_id = match &plan {
                    Plan::Create { id, .. } | Plan::Existing { id } | Plan::Update { id, .. } => {
                        Some(id)
                    }
                    Plan::Held { id } => id.as_ref(),
                    _ => None,
                };
                if let Some(id) = target_id
                    && local_refs
                        .insert(full_url.clone(), format!("{}/{id}", entry.resource_type))
                        .is_some()
                {
                    return Err(at(i)(Error::invalid(
                        IssueType::Duplicate,
                        format!("fullUrl '{full_url}' appears on more than one entry"),
                    )));
                }
            }
            plans.push(plan);
        }
        for (reference, (i, criteria)) in reference_criteria.iter() {
            match matched(criteria).as_slice() {
                [id] => {
                    local_refs.insert(
                        reference.clone(),
                        format!("{}/{id}", criteria.resource_type),
                    );
                }
                [] => {
                    return Err(at(*i)(Error::invalid(
                        IssueType::NotFound,
                        format!("conditional reference '{reference}' matches no resource"),
                    )));
                }
                m => {
                    return Err(at(*i)(Error::PreconditionFailed(format!(
                        "conditional reference '{reference}' matches {} resources; it must match exactly one",
                        m.len()
                    ))));
                }
            }
        }

        // 5. One entry per resource: two entries writing the same resource would be ambiguous.
        let mut touched: HashSet<(String, String)> = HashSet::new();
        for (i, (entry, plan)) in entries.iter().zip(&plans).enumerate() {
            let id = match plan {
                Plan::Create { id, .. } | Plan::Update { id, .. } | Plan::Delete { id, .. } => id,
                _ => continue,
            };
            if !touched.insert((entry.resource_type.clone(), id.clone())) {
                return Err(at(i)(Error::invalid(
                    IssueType::Duplicate,
                    format!(
                        "{}/{id} is changed by more than one entry",
                        entry.resource_type
                    ),
                )));
            }
        }

        // 6. Number the new versions (the heads were locked before the hook). A trust's system
        // writes only under its own provenance: it may not replace or delete what another
        // organisation wrote, whichever door (REST, Bundle, conditional) it used.
        if author.kind == "system"
            && let Some(org) = &author.org
        {
            for (i, (e, p)) in entries.iter().zip(&plans).enumerate() {
                let (Plan::Update { id, .. } | Plan::Delete { id, .. }) = p else {
                    continue;
                };
                if let Some(owner) = heads
                    .get(&(e.resource_type.clone(), id.clone()))
                    .and_then(|h| h.author_org.as_ref())
                    && owner != org
                {
                    return Err(EntryFailure {
                        index: Some(i),
                        error: Error::Located {
                            status: 403,
                            issues: vec![Issue::error(
                                IssueType::Forbidden,
                                format!(
                                    "{}/{id} was written by another organisation; {org} may change only its own resources",
                                    e.resource_type
                                ),
                            )],
                        },
                    });
                }
            }
        }
        let mut hashes: HashMap<(String, String), Vec<u8>> = HashMap::new();
        let heads: HashMap<(String, String), Head> = heads
            .into_iter()
            .map(|(k, h)| {
                if let Some(hash) = h.content_hash {
                    hashes.insert(k.clone(), hash);
                }
                (k, h.head)
            })
            .collect();
        let now = now_millis();
        // Every door (REST, bundles, messaging, NATS, import) writes through here, so every
        // stored version carries the labels the current mapping asks for.
        let sensitivity = self.labels.get();
        let mut versions: Vec<NewVersion> = Vec::new();
        // By position in `versions`: the resource of a version whose access facts it may
        // change, as its content was serialised from (the facts need not parse it again).
        let mut fact_resources: Vec<Option<Value>> = Vec::new();
        // Per entry: (status, index into `versions`) or an outcome decided without writing.
        let mut results: Vec<Option<(u16, usize)>> = vec![None; entries.len()];
        let mut unchanged: HashMap<usize, EntryOutcome> = HashMap::new();
        for (i, (entry, plan)) in entries.iter().zip(plans).enumerate() {
            let rt = &entry.resource_type;
            match plan {
                Plan::Create { id, mut resource } => {
                    if rt == "Patient" {
                        crate::identity::demographics::flag_patient(&mut resource);
                    }
                    let unresolved = rewrite(&mut resource, &local_refs);
                    if in_bundle {
                        check_unresolved(&unresolved).map_err(at(i))?;
                    }
                    sensitivity.apply(&mut resource);
                    stamp(&mut resource, &id, 1, now);
                    results[i] = Some((201, versions.len()));
                    let (content, hash) = content_and_hash(&resource);
                    versions.push(NewVersion {
                        content_hash: Some(hash),
                        ..new_version(
                            rt,
                            &id,
                            1,
                            now,
                            Operation::Create,
                            "POST",
                            Some((&resource, content)),
                            self.compartments.as_ref(),
                        )
                    });
                    fact_resources
                        .push(crate::access::facts::changes_facts(rt).then_some(resource));
                }
                Plan::Update {
                    id,
                    mut resource,
                    if_match,
                } => {
                    let head = heads.get(&(rt.clone(), id.clone()));
                    if let Some(expected) = if_match
                        && head.map(|h| h.version_id) != Some(expected)
                    {
                        return Err(at(i)(Error::PreconditionFailed(format!(
                            "If-Match expected version {expected} of {rt}/{id} but the current version is {}",
                            head.map(|h| h.version_id.to_string())
                                .unwrap_or_else(|| "none (it does not exist)".into())
                        ))));
                    }
                    if rt == "Patient" {
                        crate::identity::demographics::flag_patient(&mut resource);
                    }
                    let unresolved = rewrite(&mut resource, &local_refs);
                    if in_bundle {
                        check_unresolved(&unresolved).map_err(at(i))?;
                    }
                    let (version, status, operation) = match head {
                        None => (1, 201, Operation::Create),
                        Some(h) if h.deleted => (h.version_id + 1, 201, Operation::Update),
                        Some(h) => (h.version_id + 1, 200, Operation::Update),
                    };
                    sensitivity.apply(&mut resource);
                    stamp(&mut resource, &id, version, now);
                    // The current content again: answered with the current version, nothing
                    // written (see `content_hash`).
                    let (content, hash) = content_and_hash(&resource);
                    if let Some(h) = head.filter(|h| !h.deleted)
                        && hashes.get(&(rt.clone(), id.clone())) == Some(&hash)
                    {
                        stamp(&mut resource, &id, h.version_id, h.last_updated);
                        unchanged.insert(
                            i,
                            EntryOutcome {
                                status: 200,
                                resource_type: rt.clone(),
                                id: Some(id.clone()),
                                version_id: Some(h.version_id),
                                last_updated: Some(h.last_updated),
                                content: Some(resource.to_string()),
                                message: format!(
                                    "{rt}/{id} is unchanged: it already holds this content (version {}); no new version was written",
                                    h.version_id
                                ),
                                written: false,
                            },
                        );
                        continue;
                    }
                    results[i] = Some((status, versions.len()));
                    versions.push(NewVersion {
                        content_hash: Some(hash),
                        ..new_version(
                            rt,
                            &id,
                            version,
                            now,
                            operation,
                            "PUT",
                            Some((&resource, content)),
                            self.compartments.as_ref(),
                        )
                    });
                    fact_resources
                        .push(crate::access::facts::changes_facts(rt).then_some(resource));
                }
                Plan::Delete { id, if_match } => {
                    let head = heads.get(&(rt.clone(), id.clone()));
                    if let Some(expected) = if_match
                        && head.map(|h| h.version_id) != Some(expected)
                    {
                        return Err(at(i)(Error::PreconditionFailed(format!(
                            "If-Match expected version {expected} of {rt}/{id} but the current version is {}",
                            head.map(|h| h.version_id.to_string())
                                .unwrap_or_else(|| "none".into())
                        ))));
                    }
                    match head {
                        Some(h) if !h.deleted => {
                            results[i] = Some((200, versions.len()));
                            versions.push(new_version(
                                rt,
                                &id,
                                h.version_id + 1,
                                now,
                                Operation::Delete,
                                "DELETE",
                                None,
                                self.compartments.as_ref(),
                            ));
                            fact_resources.push(None);
                        }
                        // Deleting what is already gone (or never was) succeeds without a new version.
                        _ => {
                            unchanged.insert(i, EntryOutcome {
                                status: 204,
                                resource_type: rt.clone(),
                                id: Some(id.clone()),
                                version_id: head.map(|h| h.version_id),
                                last_updated: head.map(|h| h.last_updated),
                                content: None,
                                message: format!("{rt}/{id} does not exist or is already deleted; nothing to delete"),
                                written: false,
                            });
                        }
                    }
                }
                Plan::NothingToDelete => {
                    unchanged.insert(
                        i,
                        EntryOutcome {
                            status: 204,
                            resource_type: rt.clone(),
                            id: None,
                            version_id: None,
                            last_updated: None,
                            content: None,
                            message:
                                "the conditional delete matched no resource; nothing to delete"
                                    .into(),
                            written: false,
                        },
                    );
                }
                Plan::Existing { id } => {
                    // Read after commit: the matched resource is returned as it stands.
                    unchanged.insert(i, EntryOutcome {
                        status: 200,
                        resource_type: rt.clone(),
                        id: Some(id.clone()),
                        version_id: None,
                        last_updated: None,
                        content: None,
                        message: format!("{rt}/{id} already matches the If-None-Exist criteria; nothing was created"),
                        written: false,
                    });
                }
                Plan::Held { id } => {
                    unchanged.insert(
                        i,
                        EntryOutcome {
                            status: 200,
                            resource_type: rt.clone(),
                            id,
                            version_id: None,
                            last_updated: None,
                            content: None,
                            message: format!("{rt}: kept as it stands; nothing was written"),
                            written: false,
                        },
                    );
                }
                Plan::Read => {}
            }
        }

        // 7. Write everything with its Provenance, link Patients to Persons (identity), let the
        //    hook add its rows, then commit: a crash keeps all of it or none.
        let written = versions.len();
        let provenance = crate::provenance::for_write(&versions, author, now, None);
        versions.extend(provenance);
        if known.group_writes {
            // Sent with the transaction's next statement: in a group going well, that is
            // after the last unit, with every unit's versions in one statement.
            tx.write_deferred(versions.clone(), author).await?;
        } else {
            tx.write(&versions, author).await?;
        }
        versions.truncate(written);
        // Access facts first: linking takes blocking-key locks that other linkers wait for
        // until this commits, so nothing that does not need them runs after it.
        // (In a group without savepoints, the group writes them for every unit at once.)
        let facts = crate::access::facts::prepare(tx, &versions, &fact_resources, author).await?;
        drop(fact_resources);
        let facts = if known.group_writes {
            Some(facts)
        } else {
            facts.write(tx).await?;
            None
        };
        // In such a group, the group links every unit's Patients after the last, exactly as
        // here (`identity::link::link_units`): the unit keeps its Patient versions for it.
        let links = if known.defer_links {
            Some(DeferredLinks {
                versions: versions
                    .iter()
                    .filter(|v| v.resource_type == "Patient")
                    .cloned()
                    .collect(),
                now,
            })
        } else {
            crate::identity::link::link_written(tx, &versions, author, now).await?;
            None
        };
        let writes = versions
            .iter()
            .map(|v| Written {
                resource_type: v.resource_type.clone(),
                id: v.id.clone(),
                identifiers: v.identifiers.clone(),
            })
            .collect();
        let pending: Vec<EntryOutcome> = (0..entries.len())
            .map(|i| match (results[i], unchanged.get(&i)) {
                (Some((status, v)), _) => written_outcome(status, &versions[v]),
                (None, Some(outcome)) => outcome.clone(),
                (None, None) => EntryOutcome {
                    status: 200,
                    resource_type: entries[i].resource_type.clone(),
                    id: None,
                    version_id: None,
                    last_updated: None,
                    content: None,
                    message: String::new(),
                    written: false,
                },
            })
            .collect();
        hook.before_commit(tx, &pending)
            .await
            .map_err(|error| EntryFailure { index: None, error })?;
        Ok(Some(Staged {
            pending,
            results,
            unchanged,
            writes,
            facts,
            links,
        }))
    }

    /// Step 8, after commit: outcomes in request order; reads (and matched conditional
    /// creates, held entries) see the committed state.
    pub(crate) async fn finish(
        &self,
        entries: &[EntryRequest],
        staged: Staged,
    ) -> Result<Vec<EntryOutcome>, EntryFailure> {
        let Staged {
            pending,
            results,
            mut unchanged,
            ..
        } = staged;
        // Moved out, not copied: each written outcome carries its resource's text.
        let mut pending: Vec<Option<EntryOutcome>> = pending.into_iter().map(Some).collect();
        let mut outcomes = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if results[i].is_some() {
                outcomes.push(pending[i].take().expect("one pending outcome per entry"));
            } else if let Some(outcome) = unchanged.remove(&i) {
                if outcome.status == 200 && outcome.content.is_none() && outcome.id.is_some() {
                    let id = outcome.id.clone().unwrap_or_default();
                    let row = self.read(&entry.resource_type, &id).await.map_err(at(i))?;
                    outcomes.push(EntryOutcome::from_row(200, row, outcome.message));
                } else {
                    outcomes.push(outcome);
                }
            } else if let EntryAction::Read { id, version } = &entry.action {
                let row = match version {
                    Some(v) => self.vread(&entry.resource_type, id, v).await,
                    None => self.read(&entry.resource_type, id).await,
                }
                .map_err(at(i))?;
                outcomes.push(EntryOutcome::from_row(200, row, String::new()));
            }
        }
        Ok(outcomes)
    }
}

fn written_outcome(status: u16, v: &NewVersion) -> EntryOutcome {
    let verb = match (v.operation, status) {
        (Operation::Delete, _) => "deleted",
        (_, 201) => "created",
        _ => "updated",
    };
    EntryOutcome {
        status,
        resource_type: v.resource_type.clone(),
        id: Some(v.id.clone()),
        version_id: Some(v.version_id),
        last_updated: Some(v.last_updated),
        content: v.content.as_deref().map(str::to_string),
        message: format!(
            "{}/{} {verb} (version {})",
            v.resource_type, v.id, v.version_id
        ),
        written: true,
    }
}

fn check_unresolved(unresolved: &[String]) -> Result<(), Error> {
    match unresolved.first() {
        None => Ok(()),
        Some(r) => Err(Error::invalid(
            IssueType::NotFound,
            format!("reference '{r}' does not match the fullUrl of any entry in the Bundle"),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn new_version(
    resource_type: &str,
    id: &str,
    version_id: i64,
    last_updated: OffsetDateTime,
    operation: Operation,
    method: &'static str,
    // The resource and its serialised text (`content_and_hash`).
    resource: Option<(&Value, String)>,
    compartments: Option<&(Arc<Registry>, i64)>,
) -> NewVersion {
    let (resource, content) = match resource {
        Some((r, text)) => (Some(r), Some(text)),
        None => (None, None),
    };
    let compartment = match (resource, compartments) {
        (Some(r), Some((registry, key))) => Some((
            *key,
            crate::search::index::compartment_candidates(registry, resource_type, id, r),
        )),
        // A deletion carries no content, hence no compartment: nothing to decide on.
        _ => None,
    };
    NewVersion {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version_id,
        last_updated,
        operation,
        method,
        content: content.map(Into::into),
        identifiers: resource.map(identifiers).unwrap_or_default(),
        compartment,
        // Set by the caller, which may have computed it already.
        content_hash: None,
    }
}

/// The heads a unit locks before its hook runs: of every resource an entry may replace or
/// delete (whether the hook then holds the entry back or not), given what each entry's
/// criteria matched.
fn head_keys(
    entries: &[EntryRequest],
    entry_criteria: &HashMap<usize, Criteria>,
    matched: &impl Fn(&Criteria) -> Vec<String>,
) -> Vec<(String, String)> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let id = match &e.action {
                EntryAction::Update {
                    target: Target::Id(id),
                    ..
                }
                | EntryAction::Delete {
                    target: Target::Id(id),
                    ..
                } => id.clone(),
                EntryAction::Update {
                    target: Target::Criteria(_),
                    resource,
                    ..
                } => match entry_criteria.get(&i).map(matched).as_deref() {
                    Some([id]) => id.clone(),
                    // No match: created, with the client's id if it gave one (which may
                    // exist: then it is replaced).
                    Some([]) | None => resource_id(resource)?.to_string(),
                    Some(_) => return None,
                },
                EntryAction::Delete {
                    target: Target::Criteria(_),
                    ..
                } => match entry_criteria.get(&i).map(matched).as_deref() {
                    Some([id]) => id.clone(),
                    _ => return None,
                },
                _ => return None,
            };
            Some((e.resource_type.clone(), id))
        })
        .collect()
}

/// Matches for each criteria: intersection over parameters, union within a parameter.
/// Identifier queries `prefetched` answers are not read again (the caller vouches that
/// nothing since could have changed them).
async fn resolve_all<'c>(
    tx: &mut WriteTx,
    criteria: &[&'c Criteria],
    prefetched: Option<&Prefetched>,
) -> Result<HashMap<&'c Criteria, Vec<String>>, crate::store::StoreError> {
    let mut out = HashMap::new();
    if criteria.is_empty() {
        return Ok(out);
    }
    // A BTreeSet both dedups and gives the sorted order the advisory locks need.
    let queries: Vec<IdentifierQuery> = criteria
        .iter()
        .flat_map(|c| c.identifier_queries().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    tx.lock_criteria(&queries).await?;
    let empty = Prefetched::new();
    let prefetched = prefetched.unwrap_or(&empty);
    let missing: Vec<IdentifierQuery> = queries
        .iter()
        .filter(|q| !prefetched.contains_key(q))
        .cloned()
        .collect();
    let found = tx.find_by_identifier(&missing).await?;
    let mut by_query: HashMap<&IdentifierQuery, &Vec<String>> =
        missing.iter().zip(&found).collect();
    for q in &queries {
        if let Some(ids) = prefetched.get(q) {
            by_query.insert(q, ids);
        }
    }
    for c in criteria {
        let mut existing = Vec::with_capacity(c.ids.len());
        for ids in &c.ids {
            existing.push(tx.existing_ids(&c.resource_type, ids).await?);
        }
        out.insert(*c, narrow(c, &by_query, existing));
    }
    Ok(out)
}

/// What a criteria matches, given the ids each of its identifier queries matched and the ids
/// of each of its `_id` lists that exist: intersection over parameters, union within one.
fn narrow(
    c: &Criteria,
    by_query: &HashMap<&IdentifierQuery, &Vec<String>>,
    existing: Vec<Vec<String>>,
) -> Vec<String> {
    let mut current: Option<BTreeSet<String>> = None;
    let mut narrow = |set: BTreeSet<String>| {
        current = Some(match current.take() {
            None => set,
            Some(prev) => prev.intersection(&set).cloned().collect(),
        });
    };
    for group in &c.identifiers {
        narrow(
            group
                .iter()
                .flat_map(|q| by_query[q].iter().cloned())
                .collect(),
        );
    }
    for ids in existing {
        narrow(ids.into_iter().collect());
    }
    current.unwrap_or_default().into_iter().collect()
}

/// Person resources are derived by identity matching (src/identity): nobody writes them
/// directly. A trust's system writes Patients only under its own ODS code.
fn check_ownership(entry: &EntryRequest, author: &Author) -> Result<(), Error> {
    if matches!(entry.action, EntryAction::Read { .. }) {
        return Ok(());
    }
    if entry.resource_type == "Person" {
        return Err(Error::Forbidden(
            "Person resources are maintained by identity matching; use Person/$merge, \
             Person/$unmerge or the review queue to change links"
                .into(),
        ));
    }
    if entry.resource_type != "Patient" || author.kind != "system" {
        return Ok(());
    }
    let resource = match &entry.action {
        EntryAction::Create { resource, .. } | EntryAction::Update { resource, .. } => resource,
        _ => return Ok(()),
    };
    if let (Some(claimed), Some(own)) = (managing_ods(resource), author.org.as_deref())
        && !claimed.eq_ignore_ascii_case(own)
    {
        return Err(Error::Forbidden(format!(
            "Patient.managingOrganization names {claimed}, but the caller writes for {own}; \
             a trust may only write its own records"
        )));
    }
    Ok(())
}

/// The ODS code a Patient's managingOrganization names, by identifier or conditional reference.
fn managing_ods(patient: &Value) -> Option<String> {
    let org = patient.get("managingOrganization")?;
    if org["identifier"]["system"].as_str() == Some(crate::provenance::ODS_SYSTEM) {
        return org["identifier"]["value"].as_str().map(str::to_string);
    }
    let reference = org["reference"].as_str()?;
    let query = reference.strip_prefix("Organization?")?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "identifier")
        .and_then(|(_, v)| {
            v.strip_prefix(crate::provenance::ODS_SYSTEM)
                .and_then(|rest| rest.strip_prefix('|'))
                .map(str::to_string)
        })
}
