//! Applying an inbound message, whichever door it came through (`$process-message` or NATS):
//! authorise the sender, upsert every resource by the sender's business identifier in one
//! transaction, hold back anything older than the state already held, remember the message id,
//! and answer with a response message.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::Row;
use time::OffsetDateTime;

use crate::access::{Caller, OdsCode, Principal};
use crate::fhir::id::new_id;
use crate::fhir::instant::format_instant;
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::interactions::{
    EntryAction, EntryOutcome, EntryRequest, HookDecision, Matched, Repository, Target, Unit,
    UnitResult, WriteHook,
};
use crate::store::{Author, WriteTx};

use super::catalogue::Catalogue;
use super::error::MessageError;
use super::idempotency::{self, Claim, SCOPE_MESSAGE};
use super::message::{self, HeaderInfo, InboundMessage};
use super::metrics;

/// Facts the transport adds: a NATS subject names the trust and the event, and they must agree
/// with the MessageHeader.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub subject_ods: Option<OdsCode>,
    pub subject_event: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied now (some resources may have been held back as stale).
    Applied,
    /// Applied before: the stored response is returned, nothing is written.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct Processed {
    pub message_id: String,
    pub disposition: Disposition,
    /// Resources written / held back as stale.
    pub written: usize,
    pub stale: usize,
    /// The response message Bundle (`response.code` ok).
    pub response: Value,
}

#[derive(Clone)]
pub struct Ingest {
    repository: Repository,
    catalogue: Arc<Catalogue>,
    /// This server's FHIR base: the response's source endpoint and focus URLs.
    base_url: String,
}

impl Ingest {
    pub fn new(repository: Repository, catalogue: Arc<Catalogue>, base_url: String) -> Ingest {
        Ingest {
            repository,
            catalogue,
            base_url,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Applies one message Bundle sent by `caller`. Its entries' resources are moved out of
    /// `bundle` (see `message::parse`); the MessageHeader stays for `error_response`.
    #[tracing::instrument(skip_all, fields(message_id))]
    pub async fn process(
        &self,
        bundle: &mut Value,
        caller: &Caller,
        envelope: &Envelope,
    ) -> Result<Processed, MessageError> {
        let started = std::time::Instant::now();
        let result = self.process_inner(bundle, caller, envelope).await;
        metrics::observe_processing(started.elapsed(), &result);
        result
    }

    /// Applies several message Bundles, each on its own terms (a message that fails is
    /// rolled back alone and reported alone), committed together: one transaction and one
    /// commit for the group (`Repository::execute_group`). Results are in input order and
    /// final: `Ok` only for messages whose writes are committed (or were committed before).
    /// As in `process`, the Bundles' resources are moved out of them.
    pub async fn process_group(
        &self,
        items: Vec<(&mut Value, &Caller, &Envelope)>,
    ) -> Vec<Result<Processed, MessageError>> {
        let started = std::time::Instant::now();
        let prepared: Vec<Result<Prepared, MessageError>> = items
            .into_iter()
            .map(|(bundle, caller, envelope)| self.prepare(bundle, caller, envelope))
            .collect();
        let mut hooks: Vec<MessageHook<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| p.hook(&self.base_url))
            .collect();
        let mut units: Vec<Unit<'_, MessageHook<'_>>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .zip(hooks.iter_mut())
            .map(|(p, hook)| Unit {
                entries: &p.requests,
                author: &p.author,
                hook,
            })
            .collect();
        let mut outcomes = self
            .repository
            .execute_group(&mut units, true)
            .await
            .into_iter();
        drop(units);
        let mut hooks = hooks.into_iter();
        let results: Vec<Result<Processed, MessageError>> = prepared
            .iter()
            .map(|p| {
                let p = p.as_ref().map_err(|e| e.clone())?;
                let hook = hooks.next().expect("one hook per prepared message");
                let outcome = outcomes.next().expect("one outcome per unit");
                self.conclude(p, hook, outcome)
            })
            .collect();
        for r in &results {
            metrics::observe_processing(started.elapsed(), r);
        }
        results
    }

    async fn process_inner(
        &self,
        bundle: &mut Value,
        caller: &Caller,
        envelope: &Envelope,
    ) -> Result<Processed, MessageError> {
        let prepared = self.prepare(bundle, caller, envelope)?;
        let mut hook = prepared.hook(&self.base_url);
        let outcome = self
            .repository
            .execute_with_hook(&prepared.requests, &prepared.author, true, &mut hook)
            .await;
        self.conclude(&prepared, hook, outcome)
    }

    /// Everything before the database: the sender may send this message, it parses against
    /// the catalogue, and its entries become conditional updates by business identifier.
    fn prepare(
        &self,
        bundle: &mut Value,
        caller: &Caller,
        envelope: &Envelope,
    ) -> Result<Prepared, MessageError> {
        let Principal::System(_) = &caller.principal else {
            return Err(MessageError::forbidden(
                None,
                "messages are sent by a trust's system (an application-restricted token), not by a person",
            ));
        };
        // Of the Bundle as sent: `parse` moves its resources out.
        let fingerprint = idempotency::fingerprint(&[bundle.to_string().as_bytes()]);
        let mut message = message::parse(bundle, &self.catalogue)?;
        tracing::Span::current().record("message_id", message.message_id.as_str());
        if &message.sender != caller.org() {
            return Err(MessageError::forbidden(
                Some("Bundle.entry[0].resource.sender"),
                format!(
                    "the message names sender {} but the caller is {}: a trust may only send its own messages",
                    message.sender,
                    caller.org()
                ),
            ));
        }
        if let Some(ods) = &envelope.subject_ods
            && ods != &message.sender
        {
            return Err(MessageError::forbidden(
                Some("Bundle.entry[0].resource.sender"),
                format!(
                    "the message was published under {ods} but names sender {}",
                    message.sender
                ),
            ));
        }
        if let Some(event) = &envelope.subject_event
            && event != &message.event.code
        {
            return Err(MessageError::permanent(
                "invalid",
                400,
                vec![
                    Issue::error(
                        IssueType::Invalid,
                        format!(
                            "the message was published under event '{event}' but its MessageHeader says '{}'",
                            message.event.code
                        ),
                    )
                    .at("Bundle.entry[0].resource.eventCoding"),
                ],
            ));
        }

        let requests: Vec<EntryRequest> = message
            .entries
            .iter_mut()
            .map(|e| EntryRequest {
                resource_type: e.resource_type.clone(),
                full_url: e.full_url.clone(),
                action: EntryAction::Update {
                    target: Target::Criteria(message::identifier_criteria(&e.key.0, &e.key.1)),
                    // Moved, not copied: nothing after this reads the entry's resource, and a
                    // copy of every resource was a measurable share of the consumer's CPU.
                    resource: std::mem::take(&mut e.resource),
                    if_match: None,
                },
            })
            .collect();
        let author = Author {
            kind: "system",
            id: caller.id().to_string(),
            org: Some(message.sender.to_string()),
            request_id: envelope
                .request_id
                .clone()
                .or_else(|| Some(format!("message:{}", message.message_id))),
        };
        Ok(Prepared {
            fingerprint,
            client: caller.client_id().unwrap_or(caller.id()).to_string(),
            message,
            requests,
            author,
        })
    }

    /// Turns the engine's answer for a prepared message into the message's result.
    fn conclude(
        &self,
        prepared: &Prepared,
        mut hook: MessageHook<'_>,
        outcome: UnitResult,
    ) -> Result<Processed, MessageError> {
        let message = &prepared.message;
        let outcome = outcome.map_err(|f| {
            let mut e = MessageError::from(f.error);
            if let Some(i) = f.index {
                let at = format!("Bundle.entry[{}]", message.entries[i].index);
                for issue in &mut e.issues {
                    issue.location = Some(match issue.location.take() {
                        Some(l) if l.starts_with("Bundle.entry[") => {
                            // The engine numbers entries without the MessageHeader.
                            relocate(&l, message)
                        }
                        Some(l) => match l.find('.') {
                            Some(dot) => format!("{at}.resource{}", &l[dot..]),
                            None => format!("{at}.resource"),
                        },
                        None => at.clone(),
                    });
                }
            }
            e
        })?;
        match outcome {
            None => {
                let (fingerprint, response) = hook.repeat.take().expect("abort means a repeat");
                if fingerprint != hook.fingerprint {
                    return Err(MessageError::permanent(
                        "conflict",
                        409,
                        vec![Issue::error(
                            IssueType::Duplicate,
                            format!(
                                "message id '{}' was already used by {} for a different message",
                                message.message_id, message.sender
                            ),
                        )
                        .at("Bundle.identifier")],
                    ));
                }
                Ok(Processed {
                    message_id: message.message_id.clone(),
                    disposition: Disposition::Duplicate,
                    written: 0,
                    stale: 0,
                    response,
                })
            }
            Some(outcomes) => {
                // Product metric: source event time → searchable, per sending client.
                if !self.repository.is_sandbox() {
                    crate::governance::freshness::committed(&prepared.client, message.timestamp);
                }
                Ok(Processed {
                    message_id: message.message_id.clone(),
                    disposition: Disposition::Applied,
                    written: outcomes.iter().filter(|o| o.written).count(),
                    stale: hook.stale.len(),
                    response: hook.response.take().expect("stored before commit"),
                })
            }
        }
    }
}

/// `Bundle.entry[k]` of the engine (MessageHeader excluded) → the message's own numbering.
fn relocate(location: &str, message: &InboundMessage) -> String {
    let rest = &location["Bundle.entry[".len()..];
    let Some(close) = rest.find(']') else {
        return location.to_string();
    };
    match rest[..close].parse::<usize>() {
        Ok(k) if k < message.entries.len() => {
            format!(
                "Bundle.entry[{}]{}",
                message.entries[k].index,
                &rest[close + 1..]
            )
        }
        _ => location.to_string(),
    }
}

/// A message that passed every check before the database, ready for the write engine.
struct Prepared {
    message: InboundMessage,
    requests: Vec<EntryRequest>,
    author: Author,
    /// Of the Bundle as received: a reused message id with other content is refused.
    fingerprint: String,
    /// The sending client, for the freshness metric.
    client: String,
}

impl Prepared {
    fn hook<'a>(&'a self, base_url: &'a str) -> MessageHook<'a> {
        MessageHook {
            message: &self.message,
            fingerprint: self.fingerprint.clone(),
            base_url,
            repeat: None,
            stale: Vec::new(),
            response: None,
            group: None,
            deferred: None,
            pending: None,
        }
    }
}

/// A source state key: `(org, resource type, system, value)`.
type StateKey = (String, String, String, String);

/// The source state written by the messages of a group staged so far, whose rows are written
/// only once every message of the group is staged (`on_group_staged`): what a later message of
/// the group must compare against instead of the rows read before the group.
type Overlay = Arc<std::sync::Mutex<HashMap<StateKey, (OffsetDateTime, String)>>>;

/// What `before_commit` writes for messages, as columns for one statement over many.
#[derive(Default)]
struct Batch {
    stale_org: Vec<String>,
    stale_message: Vec<String>,
    stale_code: Vec<String>,
    stale_type: Vec<String>,
    stale_system: Vec<String>,
    stale_value: Vec<String>,
    stale_id: Vec<Option<String>>,
    stale_time: Vec<OffsetDateTime>,
    stale_held_time: Vec<OffsetDateTime>,
    stale_held_message: Vec<String>,
    /// Source state rows by key: one per key (the last message's, as one statement may not
    /// update a row twice), in key order.
    state: std::collections::BTreeMap<StateKey, (String, OffsetDateTime, String)>,
    version_type: Vec<String>,
    version_id: Vec<String>,
    version: Vec<i64>,
    version_org: Vec<String>,
    version_message: Vec<String>,
    version_code: Vec<String>,
    version_focus: Vec<bool>,
    response_org: Vec<String>,
    response_key: Vec<String>,
    /// Of the claim the group made for the message (`on_group_locked`).
    response_fingerprint: Vec<String>,
    /// Serialised here rather than copied: the message keeps its response to answer with.
    response: Vec<String>,
}

impl Batch {
    fn append(&mut self, other: Batch) {
        self.stale_org.extend(other.stale_org);
        self.stale_message.extend(other.stale_message);
        self.stale_code.extend(other.stale_code);
        self.stale_type.extend(other.stale_type);
        self.stale_system.extend(other.stale_system);
        self.stale_value.extend(other.stale_value);
        self.stale_id.extend(other.stale_id);
        self.stale_time.extend(other.stale_time);
        self.stale_held_time.extend(other.stale_held_time);
        self.stale_held_message.extend(other.stale_held_message);
        self.state.extend(other.state);
        self.version_type.extend(other.version_type);
        self.version_id.extend(other.version_id);
        self.version.extend(other.version);
        self.version_org.extend(other.version_org);
        self.version_message.extend(other.version_message);
        self.version_code.extend(other.version_code);
        self.version_focus.extend(other.version_focus);
        self.response_org.extend(other.response_org);
        self.response_key.extend(other.response_key);
        self.response_fingerprint.extend(other.response_fingerprint);
        self.response.extend(other.response);
    }

    /// Drops a triggering event repeating an earlier one's version (`write` inserts them
    /// without `ON CONFLICT`, which kept the first).
    fn keep_first_triggering_events(&mut self) {
        let mut seen = HashSet::new();
        let keep: Vec<bool> = (0..self.version.len())
            .map(|k| {
                seen.insert((
                    self.version_type[k].clone(),
                    self.version_id[k].clone(),
                    self.version[k],
                ))
            })
            .collect();
        if !keep.contains(&false) {
            return;
        }
        fn only<T>(items: &mut Vec<T>, keep: &[bool]) {
            let mut k = 0;
            items.retain(|_| {
                k += 1;
                keep[k - 1]
            });
        }
        only(&mut self.version_type, &keep);
        only(&mut self.version_id, &keep);
        only(&mut self.version, &keep);
        only(&mut self.version_org, &keep);
        only(&mut self.version_message, &keep);
        only(&mut self.version_code, &keep);
        only(&mut self.version_focus, &keep);
    }

    /// Stale entries, source states, triggering events and responses, in one round trip.
    ///
    /// Triggering events are inserted without `ON CONFLICT` (a unique-index probe before
    /// every row and a confirmation record after it): a row names a version its message
    /// wrote in this transaction (`EntryOutcome::written`), new to `resource_version`'s
    /// primary key, and `event_version` rows are written only with their version, so one can
    /// meet only another of this transaction. Each version's is kept once, the first, as
    /// `ON CONFLICT DO NOTHING` kept it.
    ///
    /// The responses go into the messages' idempotency rows, which `on_group_locked` claimed in
    /// this transaction, through `ON CONFLICT … DO UPDATE` on the primary key rather than an
    /// `UPDATE … FROM` join with the list: a group's statements keep the plan made when the
    /// connection first ran them (`Store::begin_group_write`), and the join's, made while the
    /// table was small, read every `message` row of the table for each group; the arbiter
    /// probes the primary key whatever the plan. The rows exist, so none is inserted.
    async fn write(mut self, tx: &mut WriteTx) -> Result<(), crate::store::StoreError> {
        self.keep_first_triggering_events();
        let (mut so, mut st, mut ss, mut sv, mut si, mut stime, mut sm) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for ((o, t, s, v), (i, time, m)) in self.state {
            so.push(o);
            st.push(t);
            ss.push(s);
            sv.push(v);
            si.push(i);
            stime.push(time);
            sm.push(m);
        }
        sqlx::query(
            "WITH stale AS (
                 INSERT INTO event_stale (org, message_id, event_code, resource_type, system, value,
                     resource_id, source_time, held_source_time, held_message_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])
                 ON CONFLICT DO NOTHING
             ), state AS (
                 INSERT INTO event_source_state
                     (org, resource_type, system, value, resource_id, source_time, message_id)
                 SELECT * FROM unnest($11::text[], $12::text[], $13::text[], $14::text[],
                     $15::text[], $16::timestamptz[], $17::text[])
                 ON CONFLICT (org, resource_type, system, value) DO UPDATE
                   SET resource_id = excluded.resource_id, source_time = excluded.source_time,
                       message_id = excluded.message_id, updated_at = now()
             ), versions AS (
                 INSERT INTO event_version
                     (resource_type, id, version_id, org, message_id, event_code, focus)
                 SELECT * FROM unnest($18::text[], $19::text[], $20::bigint[], $21::text[],
                     $22::text[], $23::text[], $24::bool[])
             )
             INSERT INTO event_idempotency (org, scope, key, fingerprint, response, created_at)
             SELECT o, 'message', k, f, r::jsonb, clock_timestamp()
             FROM unnest($25::text[], $26::text[], $27::text[], $28::text[]) AS x(o, k, r, f)
             ON CONFLICT (org, scope, key) DO UPDATE
               SET response = excluded.response, created_at = excluded.created_at",
        )
        .bind(&self.stale_org)
        .bind(&self.stale_message)
        .bind(&self.stale_code)
        .bind(&self.stale_type)
        .bind(&self.stale_system)
        .bind(&self.stale_value)
        .bind(&self.stale_id)
        .bind(&self.stale_time)
        .bind(&self.stale_held_time)
        .bind(&self.stale_held_message)
        .bind(&so)
        .bind(&st)
        .bind(&ss)
        .bind(&sv)
        .bind(&si)
        .bind(&stime)
        .bind(&sm)
        .bind(&self.version_type)
        .bind(&self.version_id)
        .bind(&self.version)
        .bind(&self.version_org)
        .bind(&self.version_message)
        .bind(&self.version_code)
        .bind(&self.version_focus)
        .bind(&self.response_org)
        .bind(&self.response_key)
        .bind(&self.response)
        .bind(&self.response_fingerprint)
        .execute(tx.connection().await?)
        .await?;
        Ok(())
    }
}

/// What `on_group_locked` read for one message of a group.
struct GroupPart {
    /// Whether the group's statement claimed this message's id for it.
    claimed: bool,
    /// `(entry, held source time, held message id)` for its entries with source state;
    /// `None` when an earlier message of the group carries one of its identifiers (that
    /// message's `before_commit` may change the state this one must compare against: read
    /// again in `on_locked`).
    held: Option<Vec<(usize, OffsetDateTime, String)>>,
    /// Set when the group's rows are written once for all (`on_group_staged`): `held` is then
    /// read for every entry, and what earlier messages of the group wrote is taken from here.
    overlay: Option<Overlay>,
}

/// The source times held for `(type, system, value)` identifiers of `org`, one primary-key
/// probe each (`OFFSET 0` keeps the subquery from being flattened: without statistics — a new
/// database, autovacuum off — the planner took `org = $1` for a few rows and read every row
/// of the trust instead). `[ordinality, source time, message id]` as JSON.
macro_rules! held_sql {
    () => {
        "COALESCE((
        SELECT json_agg(json_build_array(k.ord, s.source_time, s.message_id))
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS k(o, t, sy, v, ord)
        CROSS JOIN LATERAL (
            SELECT s.source_time, s.message_id FROM event_source_state s
            WHERE s.org = k.o AND s.resource_type = k.t AND s.system = k.sy AND s.value = k.v
            OFFSET 0
        ) s
    ), '[]'::json)"
    };
}

/// `[ordinality, source time, message id]` items → `(ordinality - 1, time, message id)`.
fn parse_held(held: &Value) -> Vec<(usize, OffsetDateTime, String)> {
    held.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            Some((
                usize::try_from(item[0].as_i64()?).ok()?.checked_sub(1)?,
                item[1]
                    .as_str()
                    .and_then(crate::fhir::instant::parse_instant)?,
                item[2].as_str()?.to_string(),
            ))
        })
        .collect()
}

impl MessageHook<'_> {
    /// The source state keys of the message's entries.
    fn state_keys(&self) -> impl Iterator<Item = (&str, &str, &str, &str)> {
        let org = self.message.sender.as_str();
        self.message.entries.iter().map(move |e| {
            (
                org,
                e.resource_type.as_str(),
                e.key.0.as_str(),
                e.key.1.as_str(),
            )
        })
    }

    /// The source times held for this message's entries, read on their own.
    async fn read_held(
        &self,
        tx: &mut WriteTx,
    ) -> Result<Vec<(usize, OffsetDateTime, String)>, crate::store::StoreError> {
        let (mut o, mut t, mut sy, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in self.state_keys() {
            o.push(k.0);
            t.push(k.1);
            sy.push(k.2);
            v.push(k.3);
        }
        let held: Value = sqlx::query_scalar(concat!("SELECT ", held_sql!()))
            .bind(&o)
            .bind(&t)
            .bind(&sy)
            .bind(&v)
            .fetch_one(tx.connection().await?)
            .await?;
        Ok(parse_held(&held))
    }
}

struct StaleEntry {
    entry: usize,
    resource_id: Option<String>,
    held_time: OffsetDateTime,
    held_message: String,
}

/// Takes part in the write transaction: claims the message id, refuses to overwrite another
/// trust's resources, holds back stale entries, and records source times, the triggering
/// event of each version, and the response.
struct MessageHook<'a> {
    message: &'a InboundMessage,
    fingerprint: String,
    base_url: &'a str,
    repeat: Option<(String, Value)>,
    stale: Vec<StaleEntry>,
    response: Option<Value>,
    /// What the group's statement read for this message (`on_group_locked`), until
    /// `on_locked` uses it.
    group: Option<GroupPart>,
    /// From `on_locked` to `before_commit`: the group writes this message's rows later, and
    /// what it will write goes here first.
    deferred: Option<Overlay>,
    /// The rows `before_commit` left for the group to write.
    pending: Option<Batch>,
}

impl WriteHook for MessageHook<'_> {
    /// Claims every message id of the group and reads the source times held for every entry,
    /// in one statement instead of one per message. The first copy of a message id claims it;
    /// a later copy finds it claimed and is a repeat, as it would be on its own.
    async fn on_group_locked(
        tx: &mut WriteTx,
        hooks: &mut [&mut Self],
    ) -> Result<(), crate::interactions::Error> {
        let db = |e: sqlx::Error| crate::interactions::Error::Store(e.into());
        let mut claims: HashSet<(&str, &str)> = HashSet::new();
        let (mut co, mut ck, mut cf) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen: HashSet<(&str, &str, &str, &str)> = HashSet::new();
        // The group writes every message's rows at its end (one statement for all) unless a
        // message names one identifier twice: alone, such a message fails when its rows are
        // written, and it must fail the same way here.
        let overlay: Option<Overlay> = hooks
            .iter()
            .all(|h| {
                let mut own = HashSet::new();
                h.state_keys().all(|k| own.insert(k))
            })
            .then(Overlay::default);
        // Per hook: whether its held times are read here, and where its entries start in the
        // flattened list.
        let mut parts: Vec<Option<usize>> = Vec::with_capacity(hooks.len());
        let (mut o, mut t, mut sy, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for h in hooks.iter() {
            let m = h.message;
            if claims.insert((m.sender.as_str(), m.message_id.as_str())) {
                co.push(m.sender.as_str());
                ck.push(m.message_id.as_str());
                cf.push(h.fingerprint.as_str());
            }
            let keys: Vec<_> = h.state_keys().collect();
            if overlay.is_none() && keys.iter().any(|k| seen.contains(k)) {
                parts.push(None);
            } else {
                parts.push(Some(o.len()));
                for k in &keys {
                    o.push(k.0);
                    t.push(k.1);
                    sy.push(k.2);
                    v.push(k.3);
                }
            }
            seen.extend(keys);
        }
        let row = sqlx::query(concat!(
            "WITH claim AS (
                 INSERT INTO event_idempotency (org, scope, key, fingerprint, response)
                 SELECT o, 'message', k, f, 'null'::jsonb
                 FROM unnest($5::text[], $6::text[], $7::text[]) AS x(o, k, f)
                 ON CONFLICT DO NOTHING
                 RETURNING org, key
             )
             SELECT COALESCE((SELECT json_agg(json_build_array(org, key)) FROM claim), '[]'::json)
                        AS claimed, ",
            held_sql!(),
            " AS held"
        ))
        .bind(&o)
        .bind(&t)
        .bind(&sy)
        .bind(&v)
        .bind(&co)
        .bind(&ck)
        .bind(&cf)
        .fetch_one(tx.connection().await?)
        .await
        .map_err(db)?;
        let claimed: Value = row.try_get("claimed").map_err(db)?;
        let claimed: HashSet<(&str, &str)> = claimed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c[0].as_str()?, c[1].as_str()?)))
            .collect();
        let held: Value = row.try_get("held").map_err(db)?;
        let held = parse_held(&held);
        let mut firsts: HashSet<(String, String)> = HashSet::new();
        let mut group = Vec::with_capacity(hooks.len());
        for (h, start) in hooks.iter().zip(&parts) {
            let m = h.message;
            let key = (m.sender.to_string(), m.message_id.clone());
            let first = !firsts.contains(&key);
            let claimed = first && claimed.contains(&(key.0.as_str(), key.1.as_str()));
            firsts.insert(key);
            let held = start.map(|start| {
                let end = start + m.entries.len();
                held.iter()
                    .filter(|(k, _, _)| (start..end).contains(k))
                    .map(|(k, time, message)| (k - start, *time, message.clone()))
                    .collect()
            });
            group.push(GroupPart {
                claimed,
                held,
                overlay: overlay.clone(),
            });
        }
        for (h, part) in hooks.iter_mut().zip(group) {
            h.group = Some(part);
        }
        Ok(())
    }

    fn forget_group(&mut self) {
        self.group = None;
        self.deferred = None;
        self.pending = None;
    }

    /// Writes the rows every message of the group left in `before_commit`, in one statement.
    async fn on_group_staged(
        tx: &mut WriteTx,
        hooks: &mut [&mut Self],
    ) -> Result<(), crate::interactions::Error> {
        let mut batch = Batch::default();
        for h in hooks.iter_mut() {
            h.deferred = None;
            if let Some(p) = h.pending.take() {
                batch.append(p);
            }
        }
        batch
            .write(tx)
            .await
            .map_err(crate::interactions::Error::Store)
    }

    async fn on_locked(
        &mut self,
        tx: &mut WriteTx,
        matched: &[Option<Matched>],
    ) -> Result<HookDecision, crate::interactions::Error> {
        self.repeat = None;
        self.stale.clear();
        self.deferred = None;
        self.pending = None;
        let m = self.message;
        let org = m.sender.as_str();
        let db = |e: sqlx::Error| crate::interactions::Error::Store(e.into());
        let (claimed, held) = match self.group.take() {
            Some(GroupPart {
                claimed,
                held: Some(held),
                overlay: Some(overlay),
            }) => {
                // As read before the group, unless an earlier message of it wrote the key.
                let mut read: HashMap<usize, (OffsetDateTime, String)> =
                    held.into_iter().map(|(i, t, m)| (i, (t, m))).collect();
                let written = overlay.lock().expect("overlay");
                let held = self
                    .state_keys()
                    .enumerate()
                    .filter_map(|(i, (o, t, s, v))| {
                        let key = (o.to_string(), t.to_string(), s.to_string(), v.to_string());
                        let (time, message) = match written.get(&key) {
                            Some(w) => w.clone(),
                            None => read.remove(&i)?,
                        };
                        Some((i, time, message))
                    })
                    .collect();
                drop(written);
                self.deferred = Some(overlay);
                (claimed, held)
            }
            Some(GroupPart {
                claimed,
                held: Some(held),
                overlay: None,
            }) => (claimed, held),
            Some(GroupPart {
                claimed,
                held: None,
                ..
            }) => (claimed, self.read_held(tx).await?),
            None => {
                // One round trip: claim the message id and read the source times held for
                // its resources.
                let (mut o, mut t, mut sy, mut v) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for k in self.state_keys() {
                    o.push(k.0);
                    t.push(k.1);
                    sy.push(k.2);
                    v.push(k.3);
                }
                let row = sqlx::query(concat!(
                    "WITH claim AS (
                         INSERT INTO event_idempotency (org, scope, key, fingerprint, response)
                         VALUES ($5, 'message', $6, $7, 'null'::jsonb)
                         ON CONFLICT DO NOTHING
                         RETURNING 1
                     )
                     SELECT EXISTS (SELECT 1 FROM claim) AS claimed, ",
                    held_sql!(),
                    " AS held"
                ))
                .bind(&o)
                .bind(&t)
                .bind(&sy)
                .bind(&v)
                .bind(org)
                .bind(&m.message_id)
                .bind(&self.fingerprint)
                .fetch_one(tx.connection().await?)
                .await
                .map_err(db)?;
                let claimed: bool = row.try_get("claimed").map_err(db)?;
                let held: Value = row.try_get("held").map_err(db)?;
                (claimed, parse_held(&held))
            }
        };
        if !claimed {
            // Seen before (the statement above waited for a concurrent first to commit; this
            // new statement sees its row).
            if let Claim::Repeat {
                fingerprint,
                response,
            } = idempotency::claim(
                tx.connection().await?,
                org,
                SCOPE_MESSAGE,
                &m.message_id,
                &self.fingerprint,
            )
            .await
            .map_err(db)?
            {
                self.repeat = Some((fingerprint, response));
                return Ok(HookDecision::Abort);
            }
        }

        // A trust may only replace what it wrote itself (the engine checks it again for every
        // door; here the refusal can name the identifier the message used).
        for (i, (e, found)) in m.entries.iter().zip(matched).enumerate() {
            let Some(Matched {
                id,
                author_org: Some(owner),
            }) = found
            else {
                continue;
            };
            if owner != org {
                return Err(crate::interactions::Error::Located {
                    status: 403,
                    issues: vec![
                        Issue::error(
                            IssueType::Forbidden,
                            format!(
                                "{}/{id} with identifier {}|{} was written by {owner}; {org} may not replace it",
                                e.resource_type, e.key.0, e.key.1
                            ),
                        )
                        .at(format!("Bundle.entry[{}].resource.identifier", m.entries[i].index)),
                    ],
                });
            }
        }

        let mut hold = HashSet::new();
        for (i, held_time, held_message) in held {
            // Same source time: the message id breaks the tie, so every arrival order ends in
            // the same state.
            if (held_time, held_message.as_str()) >= (m.timestamp, m.message_id.as_str()) {
                hold.insert(i);
                self.stale.push(StaleEntry {
                    entry: i,
                    resource_id: matched[i].as_ref().map(|m| m.id.clone()),
                    held_time,
                    held_message,
                });
            }
        }
        Ok(HookDecision::Proceed { hold })
    }

    async fn before_commit(
        &mut self,
        tx: &mut WriteTx,
        outcomes: &[EntryOutcome],
    ) -> Result<(), crate::interactions::Error> {
        let m = self.message;
        let org = m.sender.as_str();
        let db = |e: sqlx::Error| crate::interactions::Error::Store(e.into());
        let stale: HashMap<usize, &StaleEntry> = self.stale.iter().map(|s| (s.entry, s)).collect();

        let mut t = Vec::new();
        let mut sy = Vec::new();
        let mut v = Vec::new();
        let mut ids = Vec::new();
        let mut vt = Vec::new();
        let mut vid = Vec::new();
        let mut vver = Vec::new();
        let mut vfocus = Vec::new();
        // Each version's triggering event once: its row is inserted without `ON CONFLICT`.
        let mut triggered = HashSet::new();
        for (i, (e, o)) in m.entries.iter().zip(outcomes).enumerate() {
            if stale.contains_key(&i) {
                continue;
            }
            if let Some(id) = &o.id {
                t.push(e.resource_type.as_str());
                sy.push(e.key.0.as_str());
                v.push(e.key.1.as_str());
                ids.push(id.as_str());
                if o.written
                    && let Some(version) = o.version_id
                    && triggered.insert((e.resource_type.as_str(), id.as_str(), version))
                {
                    vt.push(e.resource_type.as_str());
                    vid.push(id.as_str());
                    vver.push(version);
                    vfocus.push(e.focus);
                }
            }
        }
        let mut issues = Vec::new();
        let mut focus = Vec::new();
        for (i, (e, o)) in m.entries.iter().zip(outcomes).enumerate() {
            let at = format!("Bundle.entry[{}]", e.index);
            if let Some(s) = stale.get(&i) {
                issues.push(
                    Issue::warning(
                        IssueType::BusinessRule,
                        format!(
                            "stale: {} {}|{} already holds state from a later event of this source ({} at {}); this entry was recorded, not applied",
                            e.resource_type,
                            e.key.0,
                            e.key.1,
                            s.held_message,
                            format_instant(s.held_time)
                        ),
                    )
                    .at(at),
                );
            } else {
                issues.push(Issue::information(IssueType::Informational, o.message.clone()).at(at));
            }
            if e.focus
                && let Some(id) = &o.id
            {
                focus.push(
                    json!({"reference": format!("{}/{}/{id}", self.base_url, e.resource_type)}),
                );
            }
        }
        let response = response_message(self.base_url, &m.header, "ok", &issues, focus);
        if let Some(overlay) = self.deferred.take() {
            // Written with the group's other messages (`on_group_staged`); later messages of
            // the group compare against this one's source times meanwhile.
            let mut batch = Batch::default();
            for st in &self.stale {
                let e = &m.entries[st.entry];
                batch.stale_org.push(org.to_string());
                batch.stale_message.push(m.message_id.clone());
                batch.stale_code.push(m.event.code.clone());
                batch.stale_type.push(e.resource_type.clone());
                batch.stale_system.push(e.key.0.clone());
                batch.stale_value.push(e.key.1.clone());
                batch.stale_id.push(st.resource_id.clone());
                batch.stale_time.push(m.timestamp);
                batch.stale_held_time.push(st.held_time);
                batch.stale_held_message.push(st.held_message.clone());
            }
            let mut written = overlay.lock().expect("overlay");
            for k in 0..t.len() {
                let key = (
                    org.to_string(),
                    t[k].to_string(),
                    sy[k].to_string(),
                    v[k].to_string(),
                );
                written.insert(key.clone(), (m.timestamp, m.message_id.clone()));
                batch
                    .state
                    .insert(key, (ids[k].to_string(), m.timestamp, m.message_id.clone()));
            }
            drop(written);
            for k in 0..vt.len() {
                batch.version_type.push(vt[k].to_string());
                batch.version_id.push(vid[k].to_string());
                batch.version.push(vver[k]);
                batch.version_org.push(org.to_string());
                batch.version_message.push(m.message_id.clone());
                batch.version_code.push(m.event.code.clone());
                batch.version_focus.push(vfocus[k]);
            }
            batch.response_org.push(org.to_string());
            batch.response_key.push(m.message_id.clone());
            batch.response_fingerprint.push(self.fingerprint.clone());
            batch.response.push(response.to_string());
            self.pending = Some(batch);
            self.response = Some(response);
            return Ok(());
        }
        for s in &self.stale {
            let e = &m.entries[s.entry];
            sqlx::query(
                "INSERT INTO event_stale (org, message_id, event_code, resource_type, system, value,
                     resource_id, source_time, held_source_time, held_message_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT DO NOTHING",
            )
            .bind(org)
            .bind(&m.message_id)
            .bind(&m.event.code)
            .bind(&e.resource_type)
            .bind(&e.key.0)
            .bind(&e.key.1)
            .bind(&s.resource_id)
            .bind(m.timestamp)
            .bind(s.held_time)
            .bind(&s.held_message)
            .execute(tx.connection().await?)
            .await
            .map_err(db)?;
        }

        // Source times, triggering events and the response, in one round trip.
        sqlx::query(
            "WITH state AS (
                 INSERT INTO event_source_state
                     (org, resource_type, system, value, resource_id, source_time, message_id)
                 SELECT $1, t, s, v, i, $6, $2
                 FROM unnest($3::text[], $4::text[], $5::text[], $7::text[]) AS x(t, s, v, i)
                 ON CONFLICT (org, resource_type, system, value) DO UPDATE
                   SET resource_id = excluded.resource_id, source_time = excluded.source_time,
                       message_id = excluded.message_id, updated_at = now()
             ), versions AS (
                 INSERT INTO event_version
                     (resource_type, id, version_id, org, message_id, event_code, focus)
                 SELECT t, i, v, $1, $2, $8, f
                 FROM unnest($9::text[], $10::text[], $11::bigint[], $12::bool[]) AS x(t, i, v, f)
             )
             UPDATE event_idempotency SET response = $13, created_at = clock_timestamp()
             WHERE org = $1 AND scope = 'message' AND key = $2",
        )
        .bind(org)
        .bind(&m.message_id)
        .bind(&t)
        .bind(&sy)
        .bind(&v)
        .bind(m.timestamp)
        .bind(&ids)
        .bind(&m.event.code)
        .bind(&vt)
        .bind(&vid)
        .bind(&vver)
        .bind(&vfocus)
        .bind(&response)
        .execute(tx.connection().await?)
        .await
        .map_err(db)?;
        self.response = Some(response);
        Ok(())
    }
}

/// A response message: MessageHeader with `response.code` and an OperationOutcome as details.
pub fn response_message(
    base_url: &str,
    request: &HeaderInfo,
    code: &str,
    issues: &[Issue],
    focus: Vec<Value>,
) -> Value {
    let header_id = new_id();
    let outcome_id = new_id();
    let mut header = json!({
        "resourceType": "MessageHeader",
        "id": header_id,
        "eventCoding": request.event_coding,
        "source": {"name": "shcr", "endpoint": format!("{base_url}/$process-message")},
        "response": {
            "identifier": request.header_id,
            "code": code,
            "details": {"reference": format!("urn:uuid:{outcome_id}")},
        },
    });
    if let Some(endpoint) = &request.source_endpoint {
        header["destination"] = json!([{"endpoint": endpoint}]);
    }
    if !focus.is_empty() {
        header["focus"] = Value::Array(focus);
    }
    let mut outcome = operation_outcome(issues);
    outcome["id"] = json!(outcome_id);
    json!({
        "resourceType": "Bundle",
        "id": new_id(),
        "type": "message",
        "timestamp": format_instant(crate::fhir::instant::now_millis()),
        "entry": [
            {"fullUrl": format!("urn:uuid:{header_id}"), "resource": header},
            {"fullUrl": format!("urn:uuid:{outcome_id}"), "resource": outcome},
        ],
    })
}

/// The response message for a message that could not be applied, when its header can be read.
pub fn error_response(base_url: &str, bundle: &Value, error: &MessageError) -> Option<Value> {
    let header = message::header_info(bundle)?;
    let code = if error.transient {
        "transient-error"
    } else {
        "fatal-error"
    };
    Some(response_message(
        base_url,
        &header,
        code,
        &error.issues,
        Vec::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn a_versions_triggering_event_is_written_once_the_first() {
        let mut batch = Batch::default();
        for (t, id, v, message) in [
            ("Patient", "p", 2, "m1"),
            ("Encounter", "e", 1, "m1"),
            ("Patient", "p", 2, "m2"),
            ("Patient", "p", 3, "m2"),
        ] {
            batch.version_type.push(t.into());
            batch.version_id.push(id.into());
            batch.version.push(v);
            batch.version_org.push("RX1".into());
            batch.version_message.push(message.into());
            batch.version_code.push("encounter-admitted-1".into());
            batch.version_focus.push(t == "Encounter");
        }
        batch.keep_first_triggering_events();
        assert_eq!(batch.version, vec![2, 1, 3]);
        assert_eq!(batch.version_type, vec!["Patient", "Encounter", "Patient"]);
        assert_eq!(batch.version_message, vec!["m1", "m1", "m2"]);
        assert_eq!(batch.version_focus, vec![false, true, false]);
        assert_eq!(batch.version_org.len(), 3);
        assert_eq!(batch.version_code.len(), 3);
        assert_eq!(batch.version_id, vec!["p", "e", "p"]);
    }
}
