//! Linking every Patient of one write unit with a fixed number of statements, whatever the unit's
//! size: the linker holds its blocking-key locks until commit, so every round trip made while
//! holding them is time other linkers wait (issue 5: a 100-record unit made ~200 round trips).
//!
//! 0. before the locks: read and score the candidates of every record (`LATERAL`, one block
//!    look-up per record), noting the snapshot they were read in (`prefetch`);
//! 1. under the locks, read what the unit needs in one statement each: the current links of
//!    updated records, reviewers' non-matches of updated records, and the `identity_patient`
//!    rows written since the snapshot (`txid`, migration 0032) — what other linkers committed
//!    while this one waited, which replaces or joins the candidates read before;
//! 2. decide record by record in memory, in the unit's order. What earlier records of the unit
//!    decided is kept in an overlay that takes the place of their (older, or missing) rows, so
//!    each record sees exactly what the one-statement-per-record linker saw;
//! 3. write the links, deactivations, their history and the review items in one statement.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;

use super::demographics::Demographics;
use super::link::{
    Assignment, Candidate, Decision, MATCHER_ID, MAX_CANDIDATES, Member, PersonsRead, db, decide,
    grade_of, swapped,
};
use super::scoring::{self, PairScore};
use crate::store::{Head, StoreError, WriteTx};

/// One Patient version of the unit: its id, whether it is the first version (nothing to
/// re-evaluate), its demographics (`None`: deleted), the organisation that wrote it, and the
/// write unit it belongs to (a group links several units' records at once, in unit order).
pub struct Record<'a> {
    pub patient_id: &'a str,
    pub first: bool,
    pub demographics: Option<Demographics>,
    pub org: Option<&'a str>,
    pub unit: usize,
}

/// A record's row as this unit left it.
struct Linked {
    assignment: Assignment,
    org: Option<String>,
    demographics: Option<Demographics>,
    blocks: Blocks,
    active: bool,
}

/// A change of link to write to `identity_link_event`.
struct Event {
    patient_id: String,
    from: Option<String>,
    to: Option<String>,
    score: Option<f64>,
    grade: String,
    method: &'static str,
}

/// Everything the unit writes, gathered while deciding and written at the end.
#[derive(Default)]
struct Pending {
    /// Patient id, demographics, link and the organisation that wrote the record.
    links: Vec<(String, Demographics, Assignment, Option<String>)>,
    deactivate: Vec<String>,
    events: Vec<Event>,
    reviews: Vec<(String, String, f64, &'static str)>,
}

/// A record's blocking values, computed once: the same test as the candidate query's `WHERE`,
/// in Rust, for records of the unit (not yet in the table, or there with older demographics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocks {
    nhs: Option<String>,
    birth: Option<time::Date>,
    swapped: Option<time::Date>,
    code: Option<String>,
    year: Option<i32>,
    postcode: Option<String>,
    names: Option<String>,
    line: Option<String>,
    place: Option<String>,
}

impl Blocks {
    pub fn of(d: &Demographics) -> Blocks {
        let birth = d.birth();
        Blocks {
            nhs: d.nhs_number.clone(),
            birth,
            swapped: d
                .birth_date
                .as_deref()
                .and_then(swapped)
                .and_then(|s| super::demographics::parse_date(&s)),
            code: d.family_code.clone(),
            year: birth.map(|b| b.year()),
            postcode: d.postcode.clone(),
            names: d.name_key(),
            line: d.line_key(),
            place: d.name_place_key(),
        }
    }

    /// Whether `other` is a candidate of this record (SQL `=`: a missing value never agrees).
    pub fn finds(&self, other: &Blocks) -> bool {
        fn eq<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
            x.is_some() && x == y
        }
        eq(&self.nhs, &other.nhs)
            || eq(&self.birth, &other.birth)
            || eq(&self.swapped, &other.birth)
            || (eq(&self.code, &other.code) && eq(&self.year, &other.year))
            || eq(&self.postcode, &other.postcode)
            || eq(&self.names, &other.names)
            || eq(&self.line, &other.line)
            || eq(&self.place, &other.place)
    }
}

/// Every record's candidates, read and scored before the unit took its blocking-key locks, and
/// the snapshot they were read in (`pg_current_snapshot()` taken just before: anything written
/// after it is read again under the locks).
pub struct Prefetched {
    snapshot: Option<String>,
    found: HashMap<usize, Vec<(Candidate, PairScore)>>,
}

/// Reads and scores the candidates of the unit's records without holding any lock. Linkers
/// sharing a blocking key run one after another, so the block look-ups, decoding and scoring
/// done here overlap with the linker that holds the locks instead of queueing behind it.
///
/// `locked`: the transaction already holds every record's blocking keys (a group took them
/// before its first unit). Then every linker that could have written a candidate committed
/// before this read, or waits for this transaction: nothing is read again under the locks
/// (no snapshot, no `changed_since`).
pub async fn prefetch(
    tx: &mut WriteTx,
    records: &[Record<'_>],
    locked: bool,
) -> Result<Prefetched, StoreError> {
    let wanted: Vec<(usize, &str, &Demographics)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.demographics.as_ref().map(|d| (i, r.patient_id, d)))
        .collect();
    if wanted.is_empty() {
        return Ok(Prefetched {
            snapshot: None,
            found: HashMap::new(),
        });
    }
    if locked {
        let (_, found) = read_candidates(tx, &wanted, false).await?;
        return Ok(Prefetched {
            snapshot: None,
            found: score_candidates(found, &wanted),
        });
    }
    // The snapshot the candidates are read in, from the same statement (one round trip, and
    // exactly the rows `changed_since` must not read again).
    let (snapshot, found) = read_candidates(tx, &wanted, true).await?;
    let snapshot = snapshot.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
    Ok(Prefetched {
        snapshot: Some(snapshot),
        found: score_candidates(found, &wanted),
    })
}

/// Scores each record's candidates (by position in the unit).
fn score_candidates(
    found: HashMap<usize, Vec<Candidate>>,
    wanted: &[(usize, &str, &Demographics)],
) -> HashMap<usize, Vec<(Candidate, PairScore)>> {
    let own: HashMap<usize, &Demographics> = wanted.iter().map(|(i, _, d)| (*i, *d)).collect();
    found
        .into_iter()
        .filter_map(|(i, cands)| {
            let d = own.get(&i)?;
            let scored = cands
                .into_iter()
                .map(|c| {
                    let s = scoring::compare(d, &c.demographics);
                    (c, s)
                })
                .collect();
            Some((i, scored))
        })
        .collect()
}

/// A row of `identity_patient` written since the prefetch snapshot: its id, and when it is
/// active and shares a blocking value with some record of the unit, the candidate it makes.
struct Changed {
    patient_id: String,
    candidate: Option<(Candidate, Blocks)>,
}

/// The rows other linkers (or reviewers) wrote since `snapshot`: with the locks held, every
/// row that could be a candidate of the unit and was not in the prefetch, or has changed since.
async fn changed_since(
    tx: &mut WriteTx,
    snapshot: &str,
    wanted: &[(usize, &str, &Demographics)],
) -> Result<Vec<Changed>, StoreError> {
    // Any record's blocking values: rows outside all of them are only dropped from the
    // prefetch, so their demographics are not read.
    let (mut nhs, mut births, mut phonetic, mut postcodes, mut names, mut lines, mut places) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (_, _, d) in wanted {
        let b = Blocks::of(d);
        nhs.extend(b.nhs);
        births.extend(b.birth);
        births.extend(b.swapped);
        if let (Some(c), Some(y)) = (b.code, b.year) {
            phonetic.push(format!("{c}|{y}"));
        }
        postcodes.extend(b.postcode);
        names.extend(b.names);
        lines.extend(b.line);
        places.extend(b.place);
    }
    // Both bounds on `txid` make it a range the planner reads through the index, even before
    // the table has statistics (autovacuum off): the rows of the linkers that committed while
    // this one waited, not the table.
    let rows = sqlx::query(
        "SELECT patient_id, person_id, org,
                CASE WHEN active AND (nhs_number = ANY($2) OR birth_date = ANY($3)
                                      OR family_code || '|' || birth_year = ANY($4)
                                      OR postcode = ANY($5) OR name_key = ANY($6)
                                      OR line_key = ANY($7) OR name_place_key = ANY($8))
                     THEN demographics END AS demographics
         FROM identity_patient
         WHERE txid >= pg_snapshot_xmin($1::text::pg_snapshot)
           AND txid < pg_snapshot_xmax(pg_current_snapshot())
           AND NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot)",
    )
    .bind(snapshot)
    .bind(&nhs)
    .bind(&births)
    .bind(&phonetic)
    .bind(&postcodes)
    .bind(&names)
    .bind(&lines)
    .bind(&places)
    .fetch_all(tx.connection().await?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            let patient_id: String = r.try_get("patient_id")?;
            let candidate = match r.try_get::<Option<Json<Demographics>>, _>("demographics")? {
                None => None,
                Some(Json(demographics)) => {
                    let blocks = Blocks::of(&demographics);
                    let c = Candidate {
                        patient_id: patient_id.clone(),
                        person_id: r.try_get("person_id")?,
                        org: r.try_get("org")?,
                        demographics,
                    };
                    Some((c, blocks))
                }
            };
            Ok(Changed {
                patient_id,
                candidate,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::Database)
}

/// The candidates of every record as of now (the locks held): the prefetched ones, less those
/// changed since, plus the changed rows in the record's blocks; a record whose prefetch was cut
/// at `MAX_CANDIDATES` is looked up again whole. Reviewers' non-matches are left out.
async fn settle(
    tx: &mut WriteTx,
    wanted: &[(usize, &str, &Demographics)],
    mut prefetched: Prefetched,
    non_matches: &HashSet<(String, String)>,
) -> Result<HashMap<usize, Vec<(Candidate, PairScore)>>, StoreError> {
    let changed = match &prefetched.snapshot {
        Some(s) => changed_since(tx, s, wanted).await?,
        None => Vec::new(),
    };
    let changed_ids: HashSet<&str> = changed.iter().map(|c| c.patient_id.as_str()).collect();
    let in_blocks: Vec<&(Candidate, Blocks)> = changed
        .iter()
        .filter_map(|c| c.candidate.as_ref())
        .collect();
    let mut again = Vec::new();
    let mut out = HashMap::with_capacity(wanted.len());
    for &(i, id, d) in wanted {
        let mut list = prefetched.found.remove(&i).unwrap_or_default();
        if list.len() as i64 >= MAX_CANDIDATES {
            again.push((i, id, d));
            continue;
        }
        list.retain(|(c, _)| !changed_ids.contains(c.patient_id.as_str()));
        let blocks = Blocks::of(d);
        for (c, b) in &in_blocks {
            if c.patient_id != id && blocks.finds(b) {
                let s = scoring::compare(d, &c.demographics);
                list.push((c.clone(), s));
            }
        }
        list.truncate(MAX_CANDIDATES as usize);
        out.insert(i, list);
    }
    if !again.is_empty() {
        out.extend(score_candidates(candidates_of(tx, &again).await?, &again));
    }
    if !non_matches.is_empty() {
        for &(i, id, _) in wanted {
            if let Some(list) = out.get_mut(&i) {
                list.retain(|(c, _)| !non_matches.contains(&pair(id, &c.patient_id)));
            }
        }
    }
    Ok(out)
}

/// The persons one write unit's links changed (membership or member scores), and their
/// members as that unit left them: what its Person versions are written from.
#[derive(Debug, Default)]
pub struct UnitPersons {
    pub touched: BTreeSet<String>,
    pub members: Vec<Member>,
}

/// What linking a group of units decided: the heads of every Person any unit touched (locked,
/// as they stood before the first unit; absent: no Person yet), and each unit's persons.
#[derive(Debug, Default)]
pub struct Decided {
    pub heads: HashMap<String, Head>,
    pub units: Vec<UnitPersons>,
}

/// A record's row, as `Member` of its Person (`None`: not an active member of any).
fn member_of(patient_id: &str, o: &Linked) -> Option<Member> {
    if !o.active {
        return None;
    }
    Some(Member {
        person_id: o.assignment.person_id.clone(),
        patient_id: patient_id.to_string(),
        org: o.org.clone(),
        score: o.assignment.score,
        grade: o.assignment.grade.clone(),
        method: o.assignment.method.clone(),
        verified_nhs: o
            .demographics
            .as_ref()
            .filter(|d| d.nhs_verified)
            .and_then(|d| d.nhs_number.clone()),
    })
}

/// Links the records of `units` write units (their blocking keys already locked, their
/// candidates prefetched), in order: record by record, each seeing what the records before it
/// decided — also those of earlier units, so linking a group of units at once decides exactly
/// as linking them one after another. Returns, for each unit, the persons whose membership or
/// member scores it changed and their members as it left them, with the Person heads locked.
pub async fn link_records(
    tx: &mut WriteTx,
    records: &[Record<'_>],
    units: usize,
    prefetched: Prefetched,
) -> Result<Decided, StoreError> {
    let started = std::time::Instant::now();
    let mut per_unit: Vec<UnitPersons> = (0..units).map(|_| UnitPersons::default()).collect();
    // The records' rows as each unit left them (only for units that touched a person): the
    // members its Person versions show.
    let mut left: Vec<Option<HashMap<String, Option<Member>>>> = (0..units).map(|_| None).collect();
    let revisited: Vec<&str> = records
        .iter()
        .filter(|r| !r.first || r.demographics.is_none())
        .map(|r| r.patient_id)
        .collect();
    let mut stored = current_rows(tx, &revisited).await?;
    let non_matches = non_matches_of(tx, &revisited).await?;
    let wanted: Vec<(usize, &str, &Demographics)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.demographics.as_ref().map(|d| (i, r.patient_id, d)))
        .collect();
    let mut found = settle(tx, &wanted, prefetched, &non_matches).await?;
    let settled = crate::metrics::link_step("settle", started);

    // Rows written (or deactivated) by earlier records of this unit, by patient id.
    let mut overlay: HashMap<String, Linked> = HashMap::new();
    let mut pending = Pending::default();
    for (i, r) in records.iter().enumerate() {
        if i > 0 && records[i - 1].unit != r.unit {
            snapshot(&mut left, &per_unit, records[i - 1].unit, &overlay);
        }
        let touched = &mut per_unit[r.unit].touched;
        let previous = overlay
            .get(r.patient_id)
            .map(|o| o.assignment.clone())
            .or_else(|| stored.remove(r.patient_id));
        let Some(d) = &r.demographics else {
            // Deleted: kept for history, never a candidate again.
            if let Some(prev) = previous {
                if pending.links.iter().any(|l| l.0 == r.patient_id) {
                    return Err(written_and_deleted());
                }
                pending.deactivate.push(r.patient_id.to_string());
                pending.events.push(Event {
                    patient_id: r.patient_id.to_string(),
                    from: Some(prev.person_id.clone()),
                    to: None,
                    score: None,
                    grade: "unlinked".into(),
                    method: "auto",
                });
                touched.insert(prev.person_id.clone());
                overlay.insert(
                    r.patient_id.to_string(),
                    Linked {
                        assignment: prev,
                        org: None,
                        demographics: None,
                        blocks: Blocks::default(),
                        active: false,
                    },
                );
            }
            continue;
        };
        let previous = if r.first { None } else { previous };
        let blocks = Blocks::of(d);
        let mut scored: Vec<(Candidate, PairScore)> = found
            .remove(&i)
            .unwrap_or_default()
            .into_iter()
            .filter(|(c, _)| !overlay.contains_key(&c.patient_id))
            .collect();
        for (id, o) in &overlay {
            let Some(od) = &o.demographics else { continue };
            if o.active
                && id != r.patient_id
                && blocks.finds(&o.blocks)
                && !non_matches.contains(&pair(r.patient_id, id))
            {
                let c = Candidate {
                    patient_id: id.clone(),
                    person_id: o.assignment.person_id.clone(),
                    org: o.org.clone(),
                    demographics: od.clone(),
                };
                let s = scoring::compare(d, &c.demographics);
                scored.push((c, s));
            }
        }
        let decision = match &previous {
            Some(p) if p.method == "manual" => manual_stands(d, p, &scored),
            _ => {
                let alone = match &previous {
                    Some(p) => {
                        !scored.iter().any(|(c, _)| c.person_id == p.person_id)
                            && members_besides(tx, &overlay, &p.person_id, r.patient_id).await? == 0
                    }
                    None => false,
                };
                decide(d, previous.as_ref(), &scored, alone)
            }
        };
        let (grade, method) = match (&previous, decision.score) {
            (Some(p), _) if p.method == "manual" => (p.grade.clone(), "manual"),
            (_, None) => ("founder".to_string(), "auto"),
            (_, Some(_)) => (decision.grade.code().to_string(), "auto"),
        };
        let moved =
            previous.as_ref().map(|p| p.person_id.as_str()) != Some(decision.person_id.as_str());
        if moved || previous.as_ref().is_some_and(|p| p.grade != grade) {
            pending.events.push(Event {
                patient_id: r.patient_id.to_string(),
                from: previous.as_ref().map(|p| p.person_id.clone()),
                to: Some(decision.person_id.clone()),
                score: decision.score,
                grade: grade.clone(),
                method,
            });
        }
        for (candidate, score, reason) in &decision.review {
            pending
                .reviews
                .push((r.patient_id.to_string(), candidate.clone(), *score, reason));
        }
        if let Some(p) = &previous
            && moved
        {
            touched.insert(p.person_id.clone());
        }
        // The Person shows the member's current score and grade even when it did not move.
        touched.insert(decision.person_id.clone());
        let assignment = Assignment {
            patient_id: r.patient_id.to_string(),
            person_id: decision.person_id,
            score: decision.score,
            grade,
            method: method.to_string(),
        };
        // A record a group wrote twice keeps one row: the later unit's.
        if pending.deactivate.iter().any(|id| id == r.patient_id) {
            return Err(written_and_deleted());
        }
        pending.links.retain(|l| l.0 != r.patient_id);
        pending.links.push((
            r.patient_id.to_string(),
            d.clone(),
            assignment.clone(),
            r.org.map(str::to_string),
        ));
        overlay.insert(
            r.patient_id.to_string(),
            Linked {
                assignment,
                org: r.org.map(str::to_string),
                demographics: Some(d.clone()),
                blocks,
                active: true,
            },
        );
    }
    if let Some(last) = records.last() {
        snapshot(&mut left, &per_unit, last.unit, &overlay);
    }
    let decided = crate::metrics::link_step("decide", settled);
    let all: BTreeSet<String> = per_unit
        .iter()
        .flat_map(|u| u.touched.iter().cloned())
        .collect();
    let read = write_pending(tx, &pending, &overlay, &all).await?;
    crate::metrics::link_step("links", decided);
    // Each unit's members: the stored rows (as before the first unit) of records no unit up
    // to it wrote, and the rows those units left.
    for (unit, rows) in per_unit.iter_mut().zip(left) {
        let Some(rows) = rows else { continue };
        let mut members: Vec<Member> = read
            .members
            .iter()
            .filter(|m| unit.touched.contains(&m.person_id) && !rows.contains_key(&m.patient_id))
            .cloned()
            .collect();
        members.extend(
            rows.into_values()
                .flatten()
                .filter(|m| unit.touched.contains(&m.person_id)),
        );
        unit.members = members;
    }
    Ok(Decided {
        heads: read.heads,
        units: per_unit,
    })
}

/// A Patient both written and deleted by the records linked at once: never within one unit
/// (the engine allows one entry per resource), only in a group, which then links unit by unit.
fn written_and_deleted() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "identity links: a Patient written and deleted in one group".into(),
    ))
}

/// Keeps the rows `unit` left (every record written so far), when it touched a person.
fn snapshot(
    left: &mut [Option<HashMap<String, Option<Member>>>],
    per_unit: &[UnitPersons],
    unit: usize,
    overlay: &HashMap<String, Linked>,
) {
    if per_unit[unit].touched.is_empty() {
        return;
    }
    left[unit] = Some(
        overlay
            .iter()
            .map(|(id, o)| (id.clone(), member_of(id, o)))
            .collect(),
    );
}

/// A person's decision stands until a person changes it; demographics still update, and other
/// persons that now match go to review.
fn manual_stands(d: &Demographics, p: &Assignment, scored: &[(Candidate, PairScore)]) -> Decision {
    Decision {
        person_id: p.person_id.clone(),
        score: p.score,
        grade: grade_of(&p.grade),
        review: decide(d, Some(p), scored, true)
            .review
            .into_iter()
            .filter(|(c, _, _)| {
                scored
                    .iter()
                    .any(|(x, _)| &x.patient_id == c && x.person_id != p.person_id)
            })
            .collect(),
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The current links of records written before (locked: a reviewer's decision on them waits).
async fn current_rows(
    tx: &mut WriteTx,
    ids: &[&str],
) -> Result<HashMap<String, Assignment>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT patient_id, person_id, score, grade, method FROM identity_patient
         WHERE patient_id = ANY($1) ORDER BY patient_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(tx.connection().await?)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|r| {
            let a = Assignment {
                patient_id: r.try_get("patient_id")?,
                person_id: r.try_get("person_id")?,
                score: r.try_get("score")?,
                grade: r.try_get("grade")?,
                method: r.try_get("method")?,
            };
            Ok((a.patient_id.clone(), a))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::Database)
}

/// Non-matches a reviewer recorded for records of the unit (only records written before can
/// have any), as ordered pairs: read under the locks, so a decision taken after the prefetch
/// counts.
async fn non_matches_of(
    tx: &mut WriteTx,
    ids: &[&str],
) -> Result<HashSet<(String, String)>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT patient_a, patient_b FROM identity_non_match
         WHERE patient_a = ANY($1) OR patient_b = ANY($1)",
    )
    .bind(ids)
    .fetch_all(tx.connection().await?)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(|(a, b)| pair(&a, &b)).collect())
}

/// Candidates of every record by any blocking key (at most `MAX_CANDIDATES` each), leaving out
/// the record itself and the records a reviewer said are someone else; by position in the unit.
pub(crate) async fn candidates_of(
    tx: &mut WriteTx,
    records: &[(usize, &str, &Demographics)],
) -> Result<HashMap<usize, Vec<Candidate>>, StoreError> {
    Ok(read_candidates(tx, records, false).await?.1)
}

/// `candidates_of`, with the statement's snapshot (`pg_current_snapshot()`) when asked.
async fn read_candidates(
    tx: &mut WriteTx,
    records: &[(usize, &str, &Demographics)],
    with_snapshot: bool,
) -> Result<(Option<String>, HashMap<usize, Vec<Candidate>>), StoreError> {
    if records.is_empty() {
        return Ok((None, HashMap::new()));
    }
    let n = records.len();
    let (mut pos, mut ids, mut nhs, mut birth, mut swap) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut code, mut year, mut postcode, mut names, mut line, mut place) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, id, d) in records {
        pos.push(*i as i32);
        ids.push(*id);
        let b = Blocks::of(d);
        nhs.push(b.nhs);
        birth.push(b.birth);
        swap.push(b.swapped);
        code.push(b.code);
        year.push(b.year);
        postcode.push(b.postcode);
        names.push(b.names);
        line.push(b.line);
        place.push(b.place);
    }
    // One block look-up per record (each an index OR over the blocking columns), in one
    // statement; its snapshot, when asked, in a row of its own (`pos` null). Planned with
    // the blocks' current size, also in a group transaction (`WriteTx::custom_plans`).
    tx.custom_plans().await?;
    let rows = sqlx::query(
        "SELECT NULL::int4 AS pos, NULL::text AS patient_id, NULL::text AS person_id,
                NULL::text AS org, NULL::jsonb AS demographics,
                pg_current_snapshot()::text AS snapshot
         WHERE $13
         UNION ALL
         SELECT k.pos, c.patient_id, c.person_id, c.org, c.demographics, NULL
         FROM unnest($1::int4[], $2::text[], $3::text[], $4::date[], $5::date[], $6::text[],
                     $7::int4[], $8::text[], $9::text[], $11::text[], $12::text[])
              AS k(pos, pid, nhs, birth, swapped, code, year, postcode, names, line, place)
         CROSS JOIN LATERAL (
             SELECT p.patient_id, p.person_id, p.org, p.demographics FROM identity_patient p
             WHERE p.active AND p.patient_id <> k.pid AND (
                   p.nhs_number = k.nhs
                OR p.birth_date = k.birth
                OR p.birth_date = k.swapped
                OR (p.family_code = k.code AND p.birth_year = k.year)
                OR p.postcode = k.postcode
                OR p.name_key = k.names
                OR p.line_key = k.line
                OR p.name_place_key = k.place)
               AND NOT EXISTS (
                   SELECT 1 FROM identity_non_match n
                   WHERE (n.patient_a = k.pid AND n.patient_b = p.patient_id)
                      OR (n.patient_b = k.pid AND n.patient_a = p.patient_id))
             LIMIT $10) c",
    )
    .bind(&pos)
    .bind(&ids)
    .bind(&nhs)
    .bind(&birth)
    .bind(&swap)
    .bind(&code)
    .bind(&year)
    .bind(&postcode)
    .bind(&names)
    .bind(MAX_CANDIDATES)
    .bind(&line)
    .bind(&place)
    .bind(with_snapshot)
    .fetch_all(tx.connection().await?)
    .await
    .map_err(db)?;
    tx.generic_plans().await?;
    let mut snapshot = None;
    let mut out: HashMap<usize, Vec<Candidate>> = HashMap::new();
    for r in rows {
        let Some(i) = r
            .try_get::<Option<i32>, _>("pos")
            .map_err(StoreError::Database)?
        else {
            snapshot = r.try_get("snapshot").map_err(StoreError::Database)?;
            continue;
        };
        let c = candidate(&r).map_err(StoreError::Database)?;
        out.entry(i as usize).or_default().push(c);
    }
    Ok((snapshot, out))
}

/// A candidate from a row of `identity_patient`; demographics are decoded straight into the
/// struct (no intermediate JSON tree: thousands per unit).
pub fn candidate(r: &sqlx::postgres::PgRow) -> Result<Candidate, sqlx::Error> {
    Ok(Candidate {
        patient_id: r.try_get("patient_id")?,
        person_id: r.try_get("person_id")?,
        org: r.try_get("org")?,
        demographics: r
            .try_get::<Json<Demographics>, _>("demographics")
            .map(|j| j.0)
            .unwrap_or_default(),
    })
}

/// Other active members of `person_id` besides `patient_id`, as the unit has left them.
async fn members_besides(
    tx: &mut WriteTx,
    overlay: &HashMap<String, Linked>,
    person_id: &str,
    patient_id: &str,
) -> Result<i64, StoreError> {
    let mine: Vec<&str> = overlay.keys().map(String::as_str).collect();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity_patient
         WHERE person_id = $1 AND active AND patient_id <> $2 AND patient_id <> ALL($3)",
    )
    .bind(person_id)
    .bind(patient_id)
    .bind(&mine)
    .fetch_one(tx.connection().await?)
    .await
    .map_err(db)?;
    let unit = overlay
        .iter()
        .filter(|(id, o)| o.active && *id != patient_id && o.assignment.person_id == person_id)
        .count() as i64;
    Ok(stored + unit)
}

/// Locks the heads of `persons` and reads their active members, to rewrite them
/// (`link::write_persons`): the linker's last statement with nothing of its own to write.
pub(crate) async fn lock_persons(
    tx: &mut WriteTx,
    persons: &BTreeSet<String>,
) -> Result<PersonsRead, StoreError> {
    write_pending(tx, &Pending::default(), &HashMap::new(), persons).await
}

/// Writes the links (with their demographics), deactivations, history and review items, locks
/// the heads of the `persons` to rewrite and reads their members, in one statement: it runs
/// while the unit holds its blocking-key locks, and on a busy machine every round trip made
/// then is paid for by each linker waiting behind this one (this was three).
///
/// The statement reads the members in its snapshot, taken before it waited for any Person head
/// another unit held. Whoever changes a Person's members rewrites that Person (under its head
/// lock, in the same transaction), so a head whose version moved between the snapshot and the
/// lock marks members that may have changed: they are then read again, with the heads held.
///
/// The members read include the stored rows of the records being linked, as they stood before
/// (the caller knows which of them each unit replaced); current rows are locked (`current_rows`),
/// so no one else changed them since.
async fn write_pending(
    tx: &mut WriteTx,
    p: &Pending,
    overlay: &HashMap<String, Linked>,
    persons: &BTreeSet<String>,
) -> Result<PersonsRead, StoreError> {
    if p.links.is_empty()
        && p.deactivate.is_empty()
        && p.events.is_empty()
        && p.reviews.is_empty()
        && persons.is_empty()
    {
        return Ok(PersonsRead::default());
    }
    let (mut read, moved) = links_statement(tx, p, persons, &[]).await?;
    if moved {
        // The heads are held now: read in a new snapshot, nothing moves them any more. The
        // records' own rows are now as this statement wrote them: their rows as they stood
        // before are those of the first read (locked, unchanged by anyone else).
        let again = std::time::Instant::now();
        let before: Vec<Member> = std::mem::take(&mut read.members)
            .into_iter()
            .filter(|m| overlay.contains_key(&m.patient_id))
            .collect();
        let mine: Vec<&str> = overlay.keys().map(String::as_str).collect();
        read = links_statement(tx, &Pending::default(), persons, &mine)
            .await?
            .0;
        read.members.extend(before);
        crate::metrics::link_step("members-again", again);
    }
    Ok(read)
}

/// `write_pending`'s statement; the members read leave out the records `mine`, and `true`
/// says a head moved after the statement's snapshot.
async fn links_statement(
    tx: &mut WriteTx,
    p: &Pending,
    rewrite: &BTreeSet<String>,
    mine: &[&str],
) -> Result<(PersonsRead, bool), StoreError> {
    let n = p.links.len();
    let mut ids = Vec::with_capacity(n);
    let mut persons = Vec::with_capacity(n);
    let mut nhs = Vec::with_capacity(n);
    let mut verified = Vec::with_capacity(n);
    let mut invalid = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut births = Vec::with_capacity(n);
    let mut years = Vec::with_capacity(n);
    let mut postcodes = Vec::with_capacity(n);
    let mut demographics = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut grades = Vec::with_capacity(n);
    let mut methods = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut lines = Vec::with_capacity(n);
    let mut places = Vec::with_capacity(n);
    let mut orgs = Vec::with_capacity(n);
    for (id, d, a, org) in &p.links {
        ids.push(id.as_str());
        orgs.push(org.as_deref());
        persons.push(a.person_id.as_str());
        nhs.push(d.nhs_number.as_deref());
        verified.push(d.nhs_verified);
        invalid.push(d.nhs_invalid);
        codes.push(d.family_code.as_deref());
        births.push(d.birth());
        years.push(d.birth_year());
        postcodes.push(d.postcode.as_deref());
        demographics.push(serde_json::to_value(d).unwrap_or(Value::Null));
        scores.push(a.score);
        grades.push(a.grade.as_str());
        methods.push(a.method.as_str());
        names.push(d.name_key());
        lines.push(d.line_key());
        places.push(d.name_place_key());
    }
    let e_ids: Vec<&str> = p.events.iter().map(|e| e.patient_id.as_str()).collect();
    let e_from: Vec<Option<&str>> = p.events.iter().map(|e| e.from.as_deref()).collect();
    let e_to: Vec<Option<&str>> = p.events.iter().map(|e| e.to.as_deref()).collect();
    let e_scores: Vec<Option<f64>> = p.events.iter().map(|e| e.score).collect();
    let e_grades: Vec<&str> = p.events.iter().map(|e| e.grade.as_str()).collect();
    let e_methods: Vec<&str> = p.events.iter().map(|e| e.method).collect();
    let r_ids: Vec<&str> = p.reviews.iter().map(|r| r.0.as_str()).collect();
    let r_cands: Vec<&str> = p.reviews.iter().map(|r| r.1.as_str()).collect();
    let r_scores: Vec<f64> = p.reviews.iter().map(|r| r.2).collect();
    let r_reasons: Vec<&str> = p.reviews.iter().map(|r| r.3).collect();
    let person_ids: Vec<&str> = rewrite.iter().map(String::as_str).collect();
    // No patient repeats in the links (the linker keeps one row per patient: a repeat would
    // make ON CONFLICT DO UPDATE fail) and no patient is both linked and deactivated (one
    // statement may not change a row twice). Link events are numbered in the records' order,
    // so the history reads as the decisions were taken.
    //
    // Person heads are locked one index probe each, in the sorted order of `persons` (the
    // order `WriteTx::lock_heads` uses), and read once more without the lock to see whether
    // they moved; members are read one index probe per Person. Without statistics (a new
    // database, autovacuum behind) a join with the id list reads every Person head, or half
    // of `identity_patient`; the `OFFSET 0` and the locking subquery keep each probe a probe.
    let rows = sqlx::query(
        "WITH links AS (
             INSERT INTO identity_patient
               (patient_id, person_id, org, nhs_number, nhs_verified, nhs_invalid, family_code,
                birth_date, birth_year, postcode, demographics, score, grade, method, name_key,
                line_key, name_place_key, linked_at, active)
             SELECT pid, person, o, nhs, ver, inv, code, birth, year, pc, dem, score, grade,
                    method, names, line, place, now(), true
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[],
                         $7::text[], $8::date[], $9::int4[], $10::text[], $11::jsonb[],
                         $12::float8[], $13::text[], $14::text[], $15::text[], $16::text[],
                         $31::text[])
                  AS k(pid, person, o, nhs, ver, inv, code, birth, year, pc, dem, score, grade,
                       method, names, line, place)
             ON CONFLICT (patient_id) DO UPDATE SET
               person_id = excluded.person_id, org = excluded.org, nhs_number = excluded.nhs_number,
               nhs_verified = excluded.nhs_verified, nhs_invalid = excluded.nhs_invalid,
               family_code = excluded.family_code, birth_date = excluded.birth_date,
               birth_year = excluded.birth_year, postcode = excluded.postcode,
               demographics = excluded.demographics, score = excluded.score,
               grade = excluded.grade, method = excluded.method, name_key = excluded.name_key,
               line_key = excluded.line_key, name_place_key = excluded.name_place_key,
               active = true,
               linked_at = CASE WHEN identity_patient.person_id = excluded.person_id
                                THEN identity_patient.linked_at ELSE now() END
         ),
         gone AS (
             UPDATE identity_patient SET active = false WHERE patient_id = ANY($17)
         ),
         events AS (
             INSERT INTO identity_link_event
               (patient_id, from_person, to_person, score, grade, method, actor)
             SELECT pid, f, t, s, g, m, $24
             FROM unnest($18::text[], $19::text[], $20::text[], $21::float8[], $22::text[],
                         $23::text[])
                  WITH ORDINALITY AS k(pid, f, t, s, g, m, ord)
             ORDER BY ord
         ),
         reviews AS (
             INSERT INTO identity_review (patient_id, candidate_id, score, reason)
             SELECT * FROM unnest($25::text[], $26::text[], $27::float8[], $28::text[])
             ON CONFLICT DO NOTHING
         ),
         locked AS MATERIALIZED (
             SELECT k.person, h.version_id, h.deleted, h.last_updated
             FROM unnest($29::text[]) AS k(person)
             CROSS JOIN LATERAL (
                 SELECT version_id, deleted, last_updated FROM resource_head
                 WHERE resource_type = 'Person' AND id = k.person FOR UPDATE
             ) h
         ),
         seen AS MATERIALIZED (
             SELECT k.person, h.version_id
             FROM unnest($29::text[]) AS k(person)
             CROSS JOIN LATERAL (
                 SELECT version_id FROM resource_head
                 WHERE resource_type = 'Person' AND id = k.person OFFSET 0
             ) h
         )
         SELECT l.person AS person_id, NULL::text AS patient_id, l.version_id, l.deleted,
                l.last_updated, s.version_id IS DISTINCT FROM l.version_id AS moved,
                NULL::text AS org, NULL::float8 AS score, NULL::text AS grade,
                NULL::text AS method, NULL::text AS verified_nhs
         FROM locked l LEFT JOIN seen s ON s.person = l.person
         UNION ALL
         SELECT m.person_id, m.patient_id, NULL, NULL, NULL, NULL, m.org, m.score, m.grade,
                m.method, m.verified_nhs
         FROM unnest($29::text[]) AS k(person)
         CROSS JOIN LATERAL (
             SELECT p.person_id, p.patient_id, p.org, p.score, p.grade, p.method,
                    CASE WHEN p.demographics -> 'nhs_verified' = 'true'::jsonb
                         THEN p.demographics ->> 'nhs_number' END AS verified_nhs
             FROM identity_patient p
             WHERE p.person_id = k.person AND p.active AND p.patient_id <> ALL($30)
             OFFSET 0
         ) m",
    )
    .bind(&ids)
    .bind(&persons)
    .bind(&orgs)
    .bind(&nhs)
    .bind(&verified)
    .bind(&invalid)
    .bind(&codes)
    .bind(&births)
    .bind(&years)
    .bind(&postcodes)
    .bind(&demographics)
    .bind(&scores)
    .bind(&grades)
    .bind(&methods)
    .bind(&names)
    .bind(&lines)
    .bind(&p.deactivate)
    .bind(&e_ids)
    .bind(&e_from)
    .bind(&e_to)
    .bind(&e_scores)
    .bind(&e_grades)
    .bind(&e_methods)
    .bind(MATCHER_ID)
    .bind(&r_ids)
    .bind(&r_cands)
    .bind(&r_scores)
    .bind(&r_reasons)
    .bind(&person_ids)
    .bind(mine)
    .bind(&places)
    .fetch_all(tx.connection().await?)
    .await
    .map_err(db)?;
    let mut read = PersonsRead::default();
    let mut moved = false;
    for r in &rows {
        let person_id: String = r.try_get("person_id").map_err(StoreError::Database)?;
        match r
            .try_get::<Option<String>, _>("patient_id")
            .map_err(StoreError::Database)?
        {
            None => {
                moved |= r
                    .try_get::<bool, _>("moved")
                    .map_err(StoreError::Database)?;
                let head = Head {
                    version_id: r.try_get("version_id").map_err(StoreError::Database)?,
                    deleted: r.try_get("deleted").map_err(StoreError::Database)?,
                    last_updated: r.try_get("last_updated").map_err(StoreError::Database)?,
                };
                read.heads.insert(person_id, head);
            }
            Some(patient_id) => read
                .members
                .push(member(r, person_id, patient_id).map_err(StoreError::Database)?),
        }
    }
    Ok((read, moved))
}

/// A member row of `identity_patient`, read for its Person.
fn member(
    r: &sqlx::postgres::PgRow,
    person_id: String,
    patient_id: String,
) -> Result<Member, sqlx::Error> {
    Ok(Member {
        person_id,
        patient_id,
        org: r.try_get("org")?,
        score: r.try_get("score")?,
        grade: r.try_get("grade")?,
        method: r.try_get("method")?,
        verified_nhs: r.try_get("verified_nhs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(birth: Option<&str>, postcode: Option<&str>, family_code: Option<&str>) -> Demographics {
        Demographics {
            birth_date: birth.map(str::to_string),
            postcode: postcode.map(str::to_string),
            family_code: family_code.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn blocks_agree_with_the_candidate_query() {
        let a = Blocks::of(&d(Some("1980-03-07"), Some("LS14AB"), Some("TMSN")));
        // Same birth date; the swapped birth date; same postcode.
        assert!(a.finds(&Blocks::of(&d(Some("1980-03-07"), None, None))));
        assert!(a.finds(&Blocks::of(&d(Some("1980-07-03"), None, None))));
        assert!(a.finds(&Blocks::of(&d(None, Some("LS14AB"), None))));
        // The phonetic family name blocks only with the same birth year.
        assert!(a.finds(&Blocks::of(&d(Some("1980-12-30"), None, Some("TMSN")))));
        assert!(!a.finds(&Blocks::of(&d(Some("1981-12-30"), None, Some("TMSN")))));
        // Missing values never agree (SQL NULL = NULL is not true).
        let empty = Blocks::of(&Demographics::default());
        assert!(!empty.finds(&empty));
        assert!(!a.finds(&empty));
    }

    #[test]
    fn name_keys_and_nhs_numbers_block() {
        let mut x = Demographics {
            nhs_number: Some("9434765919".into()),
            ..Default::default()
        };
        let y = x.clone();
        assert!(Blocks::of(&x).finds(&Blocks::of(&y)));
        x.nhs_number = None;
        x.family_code = Some("TMSN".into());
        x.given_code = Some("RBRT".into());
        let mut z = x.clone();
        assert!(Blocks::of(&x).finds(&Blocks::of(&z)), "same phonetic names");
        z.given_code = Some("ALS".into());
        assert!(!Blocks::of(&x).finds(&Blocks::of(&z)));
        // Exchanged names share the key; so do records at one house of one postcode district
        // (the postcodes themselves differ here).
        let mut swapped = x.clone();
        std::mem::swap(&mut swapped.family_code, &mut swapped.given_code);
        assert!(Blocks::of(&x).finds(&Blocks::of(&swapped)));
        x.postcode = Some("LS14AB".into());
        z.postcode = Some("LS14AD".into());
        z.address_line = Some("12 MILL LANE".into());
        assert!(!Blocks::of(&x).finds(&Blocks::of(&z)));
        x.address_line = Some("12 MILL LANE".into());
        assert!(Blocks::of(&x).finds(&Blocks::of(&z)));
        // Names mistyped past their third letter, in one district.
        z.address_line = None;
        x.family = Some("THOMPSON".into());
        x.given = Some("ROBERT".into());
        z.family = Some("ROBBERT".into());
        z.given = Some("THOMSBON".into());
        assert!(Blocks::of(&x).finds(&Blocks::of(&z)));
        z.postcode = Some("BD74AD".into());
        assert!(!Blocks::of(&x).finds(&Blocks::of(&z)));
    }
}
