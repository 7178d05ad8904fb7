//! Linking inside the write transaction: every Patient version the write engine writes (from
//! any door: REST, transaction Bundles, messaging, NATS, `shcr import`) is linked to a Person
//! before the transaction commits, so a Patient never exists without its link and a crash loses
//! neither (both or nothing are committed).
//!
//! Concurrency: the linker reads and scores candidates, then takes transaction-scoped advisory
//! locks on the new records' blocking keys and reads again the rows written since its first
//! read. Two records that could be candidates of each other share at least one blocking key, so
//! the second waits until the first has committed and then sees it among those rows (READ
//! COMMITTED reads the latest committed rows per statement). Person resources are rewritten
//! under their head row locks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::demographics::{Demographics, FLAG_SYSTEM};
use super::scoring::{Grade, PairScore};
use crate::fhir::id::new_id;
use crate::fhir::instant::format_instant;
use crate::store::{Author, Head, NewVersion, Operation, StoreError, WriteTx};

/// The matcher as the author of automatic Person versions and link decisions.
pub const MATCHER_ID: &str = "shcr-identity-matcher";
/// Extension on `Person.link` carrying the link's score, grade and method.
pub const LINK_EXT: &str = "https://fhir.shcr.example.nhs.uk/StructureDefinition/person-link-match";
/// Most candidates scored per record; blocks larger than this are a data problem, not people.
pub(crate) const MAX_CANDIDATES: i64 = 500;

pub fn matcher_author(request_id: Option<&str>) -> Author {
    Author {
        kind: "system",
        id: MATCHER_ID.into(),
        org: None,
        request_id: request_id.map(str::to_string),
    }
}

/// One Patient's current link, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub patient_id: String,
    pub person_id: String,
    pub score: Option<f64>,
    pub grade: String,
    pub method: String,
}

/// A candidate record found through blocking.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub patient_id: String,
    pub person_id: String,
    pub org: Option<String>,
    pub demographics: Demographics,
}

/// FNV-1a, stable across processes, for advisory lock keys.
fn lock_key(parts: &[&str]) -> i64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash as i64
}

/// The blocking keys of a record: candidates are the records sharing at least one.
pub fn blocking_keys(d: &Demographics) -> Vec<i64> {
    let mut keys = Vec::new();
    if let Some(n) = &d.nhs_number {
        keys.push(lock_key(&["nhs", n]));
    }
    if let Some(b) = &d.birth_date {
        keys.push(lock_key(&["birth", b]));
        if let Some(s) = swapped(b) {
            keys.push(lock_key(&["birth", &s]));
        }
    }
    if let (Some(c), Some(y)) = (&d.family_code, d.birth_year()) {
        keys.push(lock_key(&["phonetic-year", c, &y.to_string()]));
    }
    if let Some(p) = &d.postcode {
        keys.push(lock_key(&["postcode", p]));
    }
    if let Some(n) = d.name_key() {
        keys.push(lock_key(&["names", &n]));
    }
    if let Some(l) = d.line_key() {
        keys.push(lock_key(&["line", &l]));
    }
    if let Some(k) = d.name_place_key() {
        keys.push(lock_key(&["name-place", &k]));
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The blocking keys `link_written` will lock for this Patient resource: a caller applying
/// several units in one transaction takes them (with its other locks, in one sorted order)
/// before the first unit, so two such transactions cannot deadlock on them.
pub fn patient_lock_keys(patient: &Value) -> Vec<i64> {
    blocking_keys(&Demographics::from_patient(patient))
}

/// The birth date with day and month swapped, when that is a date.
pub(crate) fn swapped(b: &str) -> Option<String> {
    if b.len() != 10 {
        return None;
    }
    let s = format!("{}-{}-{}", &b[..4], &b[8..10], &b[5..7]);
    (s != b
        && time::Date::parse(
            &s,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .is_ok())
    .then_some(s)
}

/// A deadlock between two linkers is a lost race: reported as a conflict so the write engine
/// retries the whole unit.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_locking(e, "identity links")
}

/// Candidates of `d` by any blocking key, leaving out `patient_id` itself and the records a
/// reviewer said are someone else.
pub async fn candidates(
    tx: &mut WriteTx,
    patient_id: &str,
    d: &Demographics,
) -> Result<Vec<Candidate>, StoreError> {
    Ok(super::unit::candidates_of(tx, &[(0, patient_id, d)])
        .await?
        .remove(&0)
        .unwrap_or_default())
}

/// What the matcher decided for one record.
#[derive(Debug, Clone)]
pub struct Decision {
    pub person_id: String,
    pub score: Option<f64>,
    pub grade: Grade,
    /// Possible matches to queue: (candidate patient, score, reason).
    pub review: Vec<(String, f64, &'static str)>,
}

/// Decides a record's person from its scored candidates. Pure: the rules in one place.
///
/// - The best person reached by a Certain or Probable pair is chosen, unless a member of that
///   person carries a verified NHS number different from the record's (a conflict).
/// - Possible pairs, conflicts and further persons that also match go to review.
/// - With no match the record keeps its person when it is alone in it, else starts a new one.
pub fn decide(
    own: &Demographics,
    previous: Option<&Assignment>,
    scored: &[(Candidate, PairScore)],
    alone_in_previous: bool,
) -> Decision {
    // Persons whose members carry a verified NHS number other than ours.
    let conflicted: BTreeSet<&str> = scored
        .iter()
        .filter(|(c, _)| {
            own.nhs_verified
                && c.demographics.nhs_verified
                && c.demographics.nhs_number != own.nhs_number
        })
        .map(|(c, _)| c.person_id.as_str())
        .collect();
    let mut best: BTreeMap<&str, (f64, Grade)> = BTreeMap::new();
    for (c, s) in scored {
        if matches!(s.grade, Grade::Certain | Grade::Probable)
            && !conflicted.contains(c.person_id.as_str())
        {
            let e = best.entry(&c.person_id).or_insert((s.score, s.grade));
            if s.score > e.0 {
                *e = (s.score, s.grade);
            }
        }
    }
    let mut ranked: Vec<(&str, (f64, Grade))> = best.into_iter().collect();
    ranked.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.0.cmp(b.0)));

    let mut review = Vec::new();
    let chosen = ranked.first().map(|(p, (s, g))| (p.to_string(), *s, *g));
    for (c, s) in scored {
        let in_chosen = chosen.as_ref().is_some_and(|(p, _, _)| *p == c.person_id);
        if in_chosen {
            continue;
        }
        let reason = if s.grade == Grade::CertainlyNot {
            None
        } else if s.conflict || conflicted.contains(c.person_id.as_str()) {
            Some("conflict")
        } else if matches!(s.grade, Grade::Certain | Grade::Probable) {
            // A second person also matches: the two persons may be one; a person decides.
            Some("ambiguous")
        } else if s.grade == Grade::Possible {
            Some("possible-match")
        } else {
            None
        };
        if let Some(reason) = reason {
            review.push((c.patient_id.clone(), s.score, reason));
        }
    }
    match chosen {
        Some((person_id, score, grade)) => Decision {
            person_id,
            score: Some(score),
            grade,
            review,
        },
        None => Decision {
            person_id: match previous {
                Some(p) if alone_in_previous => p.person_id.clone(),
                _ => new_id(),
            },
            score: None,
            grade: Grade::CertainlyNot,
            review,
        },
    }
}

/// Links every Patient among `versions` (just written in `tx` by `author`), rewriting the
/// Person resources whose membership changed and recording Provenance for them.
pub async fn link_written(
    tx: &mut WriteTx,
    versions: &[NewVersion],
    author: &Author,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    link_units(
        tx,
        &[LinkUnit {
            versions,
            author,
            now,
        }],
    )
    .await
}

/// One write unit's versions, as `link_units` links them.
pub struct LinkUnit<'a> {
    pub versions: &'a [NewVersion],
    pub author: &'a Author,
    pub now: OffsetDateTime,
}

/// Links the Patients of several write units staged in `tx`, in unit order, exactly as
/// `link_written` after each unit would (a group without savepoints links once after its last
/// unit): the records are decided one after another, each seeing the earlier ones' links, and
/// each unit's Person versions show its persons as it left them, with its own Provenance and
/// time. Reads and writes are one statement each for all units (a Person several units changed
/// gets one version per unit: one more write statement for each such repeat).
pub async fn link_units(tx: &mut WriteTx, units: &[LinkUnit<'_>]) -> Result<(), StoreError> {
    let mut patients: Vec<(usize, &NewVersion, Option<Demographics>)> = Vec::new();
    for (u, unit) in units.iter().enumerate() {
        for v in unit
            .versions
            .iter()
            .filter(|v| v.resource_type == "Patient")
        {
            let d = v
                .content
                .as_deref()
                .filter(|_| v.operation != Operation::Delete)
                .map(|c| {
                    Demographics::from_patient(&serde_json::from_str(c).unwrap_or(Value::Null))
                });
            patients.push((u, v, d));
        }
    }
    if patients.is_empty() {
        return Ok(());
    }
    // Every blocking key of the units at once, in one sorted order: one round trip, and no two
    // linkers can wait on each other's keys in opposite orders.
    let mut keys: Vec<i64> = patients
        .iter()
        .filter_map(|(_, _, d)| d.as_ref())
        .flat_map(blocking_keys)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    // A group that took every key before its first unit reads the candidates under them.
    let locked = keys.iter().all(|k| tx.holds(*k));
    let records: Vec<super::unit::Record> = patients
        .into_iter()
        .map(|(u, v, d)| super::unit::Record {
            patient_id: &v.id,
            // A first version has no link yet: no need to look for one.
            first: v.version_id == 1,
            demographics: d,
            org: units[u].author.org.as_deref(),
            unit: u,
        })
        .collect();
    let started = std::time::Instant::now();
    let prefetched = super::unit::prefetch(tx, &records, locked).await?;
    let asked = crate::metrics::link_step("prefetch", started);
    // A group of units took its units' keys before the first (`WriteTx::lock_for_transaction`):
    // `lock_advisory` skips those.
    tx.lock_advisory(keys).await?;
    let locked = crate::metrics::link_step("lock-wait", asked);
    crate::metrics::IDENTITY_LOCK_WAIT.observe((locked - asked).as_secs_f64());
    let decided = super::unit::link_records(tx, &records, units.len(), prefetched).await?;
    let written = std::time::Instant::now();
    // Each unit's Person versions from the heads as the units before it left them; a Person
    // written by several units gets a version for each, in unit order, one write statement
    // per repeat (a statement changes a head once).
    let mut heads = decided.heads;
    let mut waves: Vec<Vec<(Vec<NewVersion>, Author)>> = Vec::new();
    let mut written_before: HashMap<String, usize> = HashMap::new();
    for (unit, persons) in units.iter().zip(decided.units) {
        if persons.touched.is_empty() {
            continue;
        }
        let versions = person_versions(&persons.touched, &heads, persons.members, unit.now);
        let mut wave = 0;
        let mut by_wave: BTreeMap<usize, Vec<NewVersion>> = BTreeMap::new();
        for v in &versions {
            heads.insert(
                v.id.clone(),
                Head {
                    version_id: v.version_id,
                    deleted: v.operation == Operation::Delete,
                    last_updated: v.last_updated,
                },
            );
            let n = written_before.entry(v.id.clone()).or_insert(0);
            wave = wave.max(*n);
            by_wave.entry(*n).or_default().push(v.clone());
            *n += 1;
        }
        let matcher = matcher_author(unit.author.request_id.as_deref());
        let provenance = crate::provenance::for_write(&versions, &matcher, unit.now, None);
        by_wave.entry(wave).or_default().extend(provenance);
        for (w, vs) in by_wave {
            if waves.len() <= w {
                waves.resize_with(w + 1, Vec::new);
            }
            waves[w].push((vs, matcher.clone()));
        }
    }
    for wave in &waves {
        let parts: Vec<(&[NewVersion], &Author)> =
            wave.iter().map(|(v, a)| (v.as_slice(), a)).collect();
        tx.write_parts(&parts).await?;
    }
    crate::metrics::link_step("persons", written);
    crate::metrics::IDENTITY_LINK_LOCKED.observe(locked.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) fn grade_of(code: &str) -> Grade {
    match code {
        "certain" => Grade::Certain,
        "probable" => Grade::Probable,
        "possible" => Grade::Possible,
        _ => Grade::CertainlyNot,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_event(
    tx: &mut WriteTx,
    patient_id: &str,
    from: Option<&str>,
    to: Option<&str>,
    score: Option<f64>,
    grade: &str,
    method: &str,
    actor: &str,
    decision: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO identity_link_event
           (patient_id, from_person, to_person, score, grade, method, actor, decision_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(patient_id)
    .bind(from)
    .bind(to)
    .bind(score)
    .bind(grade)
    .bind(method)
    .bind(actor)
    .bind(decision)
    .execute(tx.connection().await?)
    .await
    .map_err(db)?;
    Ok(())
}

/// FHIR Person.link.assurance for a link: level4 for a verified NHS number or a person's
/// decision, level3 for a probabilistic match, level2 for a record standing alone.
fn assurance(grade: &str, method: &str) -> &'static str {
    match (grade, method) {
        (_, "manual") | ("certain", _) => "level4",
        ("probable", _) => "level3",
        _ => "level2",
    }
}

/// A Person's member as its Person resource shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub person_id: String,
    pub patient_id: String,
    pub org: Option<String>,
    pub score: Option<f64>,
    pub grade: String,
    pub method: String,
    /// The member's NHS number when it is verified: the Person's identifier.
    pub verified_nhs: Option<String>,
}

/// What rewriting Persons starts from: their heads, locked (absent: a new Person), and their
/// active members as of the lock.
#[derive(Debug, Default)]
pub struct PersonsRead {
    pub heads: HashMap<String, Head>,
    pub members: Vec<Member>,
}

/// Rewrites the Person resource of each person from its current members (deleting a Person
/// left with none), with Provenance naming `author` (the matcher or the reviewer).
pub async fn write_persons(
    tx: &mut WriteTx,
    persons: &BTreeSet<String>,
    author: &Author,
    now: OffsetDateTime,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    if persons.is_empty() {
        return Ok(());
    }
    let read = super::unit::lock_persons(tx, persons).await?;
    rewrite_persons(tx, persons, read, author, now, reason).await
}

/// As `write_persons`, from heads and members already read under the heads' locks.
pub(crate) async fn rewrite_persons(
    tx: &mut WriteTx,
    persons: &BTreeSet<String>,
    read: PersonsRead,
    author: &Author,
    now: OffsetDateTime,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    if persons.is_empty() {
        return Ok(());
    }
    let versions = person_versions(persons, &read.heads, read.members, now);
    let provenance = crate::provenance::for_write(&versions, author, now, reason);
    let mut versions = versions;
    versions.extend(provenance);
    tx.write(&versions, author).await
}

/// The Person versions that show `persons` with `members` (those left with none are deleted),
/// from their current `heads` (absent: a new Person).
fn person_versions(
    persons: &BTreeSet<String>,
    heads: &HashMap<String, Head>,
    mut members: Vec<Member>,
    now: OffsetDateTime,
) -> Vec<NewVersion> {
    // Members in patient id order: the Person's links and its identifier (the first verified
    // number) do not depend on where each member was read from.
    members.sort_by(|a, b| {
        (a.person_id.as_str(), a.patient_id.as_str())
            .cmp(&(b.person_id.as_str(), b.patient_id.as_str()))
    });
    let mut links_of: HashMap<String, Vec<Value>> = HashMap::new();
    let mut verified_nhs: HashMap<String, String> = HashMap::new();
    for m in members {
        if let Some(n) = m.verified_nhs {
            verified_nhs.entry(m.person_id.clone()).or_insert(n);
        }
        let mut ext = vec![
            json!({"url": "grade", "valueCode": m.grade}),
            json!({"url": "method", "valueCode": m.method}),
        ];
        if let Some(s) = m.score {
            ext.push(json!({"url": "score", "valueDecimal": (s * 100.0).round() / 100.0}));
        }
        let mut target = json!({"reference": format!("Patient/{}", m.patient_id)});
        if let Some(org) = m.org {
            target["display"] = json!(format!("record held by {org}"));
        }
        links_of.entry(m.person_id).or_default().push(json!({
            "extension": [{"url": LINK_EXT, "extension": ext}],
            "target": target,
            "assurance": assurance(&m.grade, &m.method),
        }));
    }
    let mut versions = Vec::new();
    for person in persons {
        let head = heads.get(person);
        let links = links_of.remove(person).unwrap_or_default();
        let (version_id, operation, method) = match head {
            None => (1, Operation::Create, "POST"),
            Some(h) => (h.version_id + 1, Operation::Update, "PUT"),
        };
        if links.is_empty() {
            // Every record moved elsewhere (merge, re-link): the Person is retired.
            if let Some(h) = head.filter(|h| !h.deleted) {
                versions.push(NewVersion {
                    resource_type: "Person".into(),
                    id: person.clone(),
                    version_id: h.version_id + 1,
                    last_updated: now,
                    operation: Operation::Delete,
                    method: "DELETE",
                    content: None,
                    identifiers: Vec::new(),
                    compartment: None,
                    content_hash: None,
                });
            }
            continue;
        }
        let mut resource = json!({
            "resourceType": "Person",
            "id": person,
            "meta": {
                "versionId": version_id.to_string(),
                "lastUpdated": format_instant(now),
                "tag": [{"system": FLAG_SYSTEM, "code": "derived-person",
                         "display": "maintained by shcr identity matching"}],
            },
            "active": true,
            "link": links,
        });
        let mut identifiers = Vec::new();
        if let Some(n) = verified_nhs.get(person) {
            resource["identifier"] = json!([{"system": super::nhs_number::SYSTEM, "value": n}]);
            identifiers.push((super::nhs_number::SYSTEM.to_string(), n.clone()));
        }
        versions.push(NewVersion {
            resource_type: "Person".into(),
            id: person.clone(),
            version_id,
            last_updated: now,
            operation: if head.is_some_and(|h| h.deleted) {
                Operation::Update
            } else {
                operation
            },
            method,
            content: Some(resource.to_string().into()),
            identifiers,
            // Written without the search registry: a read decides it from its content.
            compartment: None,
            content_hash: None,
        });
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(patient: &str, person: &str, d: Demographics) -> Candidate {
        Candidate {
            patient_id: patient.into(),
            person_id: person.into(),
            org: None,
            demographics: d,
        }
    }

    fn score(s: f64, grade: Grade, conflict: bool) -> PairScore {
        PairScore {
            score: s,
            grade,
            conflict,
            levels: Vec::new(),
        }
    }

    #[test]
    fn best_matching_person_is_chosen_and_possibles_queued() {
        let own = Demographics::default();
        let scored = vec![
            (
                cand("a", "P1", Demographics::default()),
                score(30.0, Grade::Probable, false),
            ),
            (
                cand("b", "P2", Demographics::default()),
                score(15.0, Grade::Possible, false),
            ),
        ];
        let d = decide(&own, None, &scored, false);
        assert_eq!(d.person_id, "P1");
        assert_eq!(d.review, vec![("b".to_string(), 15.0, "possible-match")]);
    }

    #[test]
    fn a_person_with_another_verified_number_is_never_joined() {
        let own = Demographics {
            nhs_number: Some("9434765919".into()),
            nhs_verified: true,
            ..Default::default()
        };
        let other = Demographics {
            nhs_number: Some("9434765870".into()),
            nhs_verified: true,
            ..Default::default()
        };
        // A record of P1 without an NHS number matches, but P1 also holds another verified number.
        let scored = vec![
            (
                cand("a", "P1", Demographics::default()),
                score(30.0, Grade::Probable, false),
            ),
            (cand("b", "P1", other), score(20.0, Grade::Possible, true)),
        ];
        let d = decide(&own, None, &scored, false);
        assert_ne!(d.person_id, "P1");
        assert!(d.review.iter().all(|(_, _, r)| *r == "conflict"));
    }

    #[test]
    fn no_match_keeps_a_lone_record_in_its_person() {
        let prev = Assignment {
            patient_id: "x".into(),
            person_id: "P9".into(),
            score: None,
            grade: "founder".into(),
            method: "auto".into(),
        };
        let d = decide(&Demographics::default(), Some(&prev), &[], true);
        assert_eq!(d.person_id, "P9");
        let d = decide(&Demographics::default(), Some(&prev), &[], false);
        assert_ne!(d.person_id, "P9");
    }

    #[test]
    fn swapped_birth_dates_are_a_blocking_key() {
        assert_eq!(swapped("1980-03-07").as_deref(), Some("1980-07-03"));
        assert_eq!(swapped("1980-03-27"), None);
        assert_eq!(swapped("1980-03-03"), None);
    }
}
