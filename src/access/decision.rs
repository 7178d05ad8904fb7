//! The read-time decision: who may see which resource, made once per request.
//!
//! A `Decider` is built per request from the caller, the loaded policy set and the access
//! facts that concern the request (care relationships of the caller's organisation, consent
//! restrictions, the user's break-glass grants). It answers two questions with one rule:
//!
//! - `check(&facts, action)` for one resource (read, vread, history entries, `_include`d
//!   resources, subscription payloads): `Verdict::Allow` or `Verdict::Deny(reason)`;
//! - `search_filter(&fields)` for index queries: a tantivy query the search engine ANDs with
//!   the user's query before counting and paging, so pages are full and totals true.
//!
//! Operations that return patient data (`$everything`, `$summary`, `$match`) use the same calls
//! through the HTTP-edge helpers in `api::access`:
//!
//! ```ignore
//! let mut d = api::access::decider(&state, &req)?;                 // caller + current policy
//! api::access::require(&d, &req, "Patient", "read")?;               // role-level: 403
//! api::access::load_grants(&state, &req, &mut d, Scope::Patients(&ids), Some(&id)).await?;
//! engine.search(&q, d.search_filter(&state.search.fields)).await?;  // index queries
//! let v = api::access::verdict(&state, &d, &row, "read");           // rows loaded by key
//! api::access::note_released(&req, &d, &patients, None);            // what the audit records
//! ```
//!
//! The rule, for a user (a person in a national RBAC role at an organisation):
//! 1. the role must allow the action on the resource type (policy.csv);
//! 2. every gated security label on the resource must be viewable by the role (`label:X view`);
//! 3. data the caller's own organisation wrote is then visible (a trust's own record);
//! 4. resources outside every patient compartment (Organization, Practitioner …) are visible;
//! 5. otherwise the organisation needs a care relationship with one of the resource's patients
//!    or the user an active break-glass grant for it, and no patient of the resource may
//!    restrict it by consent: a full opt-out, a denied organisation (the caller's), or a
//!    denied label the resource carries. Break-glass lifts organisation and label denials and,
//!    only when `break_glass_overrides_opt_out`, opt-outs.
//!
//! A contributing trust's system reads only what its own organisation wrote.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tantivy::Term;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use uuid::Uuid;

use super::policy::{PolicySet, Profile};
use super::{Caller, Principal};
use crate::search::filter_cache::CachedFilter;
use crate::search::index::{Fields, NO_COMPARTMENT};
use crate::search::indexer::SearchIndex;
use crate::search::terms::{ANY, any_of, join};
use crate::store::{Store, StoreError};

/// Who asks, reduced to what the rule needs.
#[derive(Debug, Clone)]
pub enum Who {
    /// Enforcement switched off (`access.enforce = false`, for benchmarks only).
    Unrestricted,
    System {
        org: String,
        profile: Profile,
    },
    User {
        org: String,
        user_id: String,
        profile: Profile,
    },
}

impl Who {
    pub fn of(caller: &Caller, enforce: bool) -> Who {
        if !enforce {
            return Who::Unrestricted;
        }
        match &caller.principal {
            Principal::System(s) => Who::System {
                org: s.ods_code.to_string(),
                profile: Profile::new(vec!["system".into()]),
            },
            Principal::User(u) => {
                let mut subjects = vec![u.job_role().to_string()];
                subjects.extend(u.activities.iter().cloned());
                Who::User {
                    org: u.org.to_string(),
                    user_id: u.user_id.clone(),
                    profile: Profile::new(subjects),
                }
            }
        }
    }
}

/// Which patients a request's facts must cover.
pub enum Scope<'a> {
    /// Every patient (searches). Facts come from the organisation's cached set, valid for the
    /// index's current access-facts generation: the caller must have waited for the index to
    /// be fresh first (`Engine::wait_fresh`).
    All,
    Patients(&'a [String]),
    /// These patients, for a caller that has waited for the index to be fresh: their facts
    /// come from the organisation's cached set like `All`'s, and break-glass grants are read
    /// only if one of them is not plainly visible without one.
    FreshPatients(&'a [String]),
}

/// Access facts for one request. The sets are shared (copy on write): a search's facts cover
/// every patient of the organisation and come from `OrgGrantsCache` without copying.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    pub relationship: Arc<HashSet<String>>,
    pub break_glass: HashMap<String, Uuid>,
    pub opted_out: Arc<HashSet<String>>,
    pub org_denied: Arc<HashSet<String>>,
    /// Label code → patients denying it.
    pub label_denied: Arc<HashMap<String, HashSet<String>>>,
    /// Names these facts while they stay unchanged (cached organisation-wide facts without
    /// break-glass grants), so index filters built from them can be cached too.
    pub cache_key: Option<u64>,
}

impl Grants {
    pub async fn load(
        store: &Store,
        org: &str,
        user_id: Option<&str>,
        window_days: u32,
        scope: &Scope<'_>,
    ) -> Result<Grants, StoreError> {
        let patients: Option<Vec<String>> = match scope {
            Scope::All => None,
            Scope::Patients(p) | Scope::FreshPatients(p) => Some(p.to_vec()),
        };
        // One round trip: relationships, break-glass grants and consent restrictions, tagged.
        // Two statements, not one with `$3 IS NULL OR …`: a read names its patients, and only a
        // plain `= ANY($3)` lets PostgreSQL use the (org, patient) index for it.
        macro_rules! grants_sql {
            ($patients:literal) => {
                concat!(
                    "SELECT 'rel', patient_id, '', NULL::uuid FROM access_relationship
                     WHERE org = $1
                       AND (period_end IS NULL OR period_end >= now() - make_interval(days => $2))
                       AND (period_start IS NULL OR period_start <= now()) AND ",
                    $patients,
                    " UNION ALL
                     SELECT 'btg', patient_id, '', id FROM access_break_glass
                     WHERE $4::text IS NOT NULL AND user_id = $4 AND org = $1
                       AND expires_at > now() AND ",
                    $patients,
                    " UNION ALL
                     SELECT kind, patient_id, value, NULL FROM access_consent
                     WHERE (period_start IS NULL OR period_start <= now())
                       AND (period_end IS NULL OR period_end >= now())
                       AND (kind <> 'deny-org' OR value = $1) AND ",
                    $patients
                )
            };
        }
        let sql = match patients {
            Some(_) => grants_sql!("patient_id = ANY($3::text[])"),
            None => grants_sql!("$3::text[] IS NULL"),
        };
        let rows: Vec<(String, String, String, Option<Uuid>)> = sqlx::query(sql)
            .bind(org)
            .bind(window_days as i32)
            .bind(&patients)
            .bind(user_id)
            .try_map(|r: sqlx::postgres::PgRow| {
                use sqlx::Row;
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            })
            .fetch_all(store.lookups_pool())
            .await?;
        let mut relationship = Vec::new();
        let mut break_glass = Vec::new();
        let mut consents = Vec::new();
        for (tag, patient, value, grant) in rows {
            match (tag.as_str(), grant) {
                ("rel", _) => relationship.push(patient),
                ("btg", Some(g)) => break_glass.push((patient, g)),
                _ => consents.push((patient, tag, value)),
            }
        }
        let mut grants = Grants::from_rows(relationship, consents);
        grants.break_glass = break_glass.into_iter().collect();
        Ok(grants)
    }

    /// These facts for `patients` only.
    pub fn restricted_to(&self, patients: &[String]) -> Grants {
        let keep = |set: &HashSet<String>| -> Arc<HashSet<String>> {
            Arc::new(
                patients
                    .iter()
                    .filter(|p| set.contains(*p))
                    .cloned()
                    .collect(),
            )
        };
        Grants {
            relationship: keep(&self.relationship),
            break_glass: self
                .break_glass
                .iter()
                .filter(|(p, _)| patients.contains(p))
                .map(|(p, g)| (p.clone(), *g))
                .collect(),
            opted_out: keep(&self.opted_out),
            org_denied: keep(&self.org_denied),
            label_denied: Arc::new(
                self.label_denied
                    .iter()
                    .map(|(label, denying)| (label.clone(), (*keep(denying)).clone()))
                    .filter(|(_, denying)| !denying.is_empty())
                    .collect(),
            ),
            cache_key: None,
        }
    }

    /// Whether a break-glass grant could change a decision about `patient`: it has no care
    /// relationship, or a consent restriction that a grant may override.
    pub fn glass_could_matter(&self, patient: &str) -> bool {
        !self.relationship.contains(patient)
            || self.opted_out.contains(patient)
            || self.org_denied.contains(patient)
            || self.label_denied.values().any(|d| d.contains(patient))
    }

    /// Facts from relationship rows (patient ids) and consent rows (patient, kind, value).
    pub fn from_rows(
        relationship: impl IntoIterator<Item = String>,
        consents: impl IntoIterator<Item = (String, String, String)>,
    ) -> Grants {
        let mut opted_out = HashSet::new();
        let mut org_denied = HashSet::new();
        let mut label_denied: HashMap<String, HashSet<String>> = HashMap::new();
        for (patient, kind, value) in consents {
            match kind.as_str() {
                "opt-out" => {
                    opted_out.insert(patient);
                }
                "deny-org" => {
                    org_denied.insert(patient);
                }
                "deny-label" => {
                    label_denied.entry(value).or_default().insert(patient);
                }
                _ => {}
            }
        }
        Grants {
            relationship: Arc::new(relationship.into_iter().collect()),
            break_glass: HashMap::new(),
            opted_out: Arc::new(opted_out),
            org_denied: Arc::new(org_denied),
            label_denied: Arc::new(label_denied),
            cache_key: None,
        }
    }
}

/// What the rule needs to know about one resource.
#[derive(Debug, Clone)]
pub struct Facts {
    pub resource_type: String,
    pub author_org: Option<String>,
    pub labels: Vec<String>,
    /// Ids of the patients whose compartment holds the resource (as the index has them).
    pub patients: Vec<String>,
}

impl Facts {
    pub fn of(
        index: &SearchIndex,
        resource_type: &str,
        id: &str,
        resource: &Value,
        author_org: Option<&str>,
    ) -> Facts {
        Facts {
            resource_type: resource_type.to_string(),
            author_org: author_org.map(str::to_string),
            labels: super::labels::security_codes(resource),
            patients: crate::search::index::patient_compartments(
                &index.registry,
                &index.base,
                resource_type,
                id,
                resource,
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The role may not do this with the resource type (or at all).
    Role,
    /// The resource carries a label the role may not see.
    Label,
    /// A system reading another organisation's data.
    OtherOrganisation,
    NoRelationship,
    OptOut,
    ConsentOrganisation,
    ConsentLabel,
}

impl Denial {
    pub fn describe(self) -> &'static str {
        match self {
            Denial::Role => "the role does not permit this interaction",
            Denial::Label => "the resource carries a security label the role may not see",
            Denial::OtherOrganisation => "a system may read only its own organisation's data",
            Denial::NoRelationship => "no legitimate relationship with the patient",
            Denial::OptOut => "the patient has opted out of sharing",
            Denial::ConsentOrganisation => "the patient's consent denies this organisation",
            Denial::ConsentLabel => "the patient's consent denies this category of data",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        /// The grant that opened the record, when break-glass was the only basis.
        break_glass: Option<Uuid>,
    },
    Deny(Denial),
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

pub struct Decider {
    pub policy: Arc<PolicySet>,
    pub who: Who,
    pub grants: Grants,
}

impl Decider {
    pub fn new(policy: Arc<PolicySet>, who: Who, grants: Grants) -> Decider {
        Decider {
            policy,
            who,
            grants,
        }
    }

    /// Role-level permission: may the caller `act` on `obj` at all?
    pub fn permits(&self, obj: &str, act: &str) -> bool {
        match &self.who {
            Who::Unrestricted => true,
            Who::System { profile, .. } | Who::User { profile, .. } => {
                self.policy.allows(profile, obj, act)
            }
        }
    }

    /// Gated labels the caller's role may see.
    fn visible_labels(&self) -> BTreeSet<&str> {
        self.policy
            .gated
            .iter()
            .filter(|l| self.permits(&format!("label:{l}"), "view"))
            .map(String::as_str)
            .collect()
    }

    fn opt_out_binds(&self, patient: &str) -> bool {
        self.grants.opted_out.contains(patient)
            && !(self.policy.settings.break_glass_overrides_opt_out
                && self.grants.break_glass.contains_key(patient))
    }

    pub fn check(&self, facts: &Facts, act: &str) -> Verdict {
        let (org, is_user) = match &self.who {
            Who::Unrestricted => return Verdict::Allow { break_glass: None },
            Who::System { org, .. } => (org, false),
            Who::User { org, .. } => (org, true),
        };
        if !self.permits(&facts.resource_type, act) {
            return Verdict::Deny(Denial::Role);
        }
        let own = facts.author_org.as_deref() == Some(org.as_str());
        if !is_user {
            return if own {
                Verdict::Allow { break_glass: None }
            } else {
                Verdict::Deny(Denial::OtherOrganisation)
            };
        }
        let visible = self.visible_labels();
        if facts
            .labels
            .iter()
            .any(|l| self.policy.gated.contains(l) && !visible.contains(l.as_str()))
        {
            return Verdict::Deny(Denial::Label);
        }
        if own || facts.patients.is_empty() {
            return Verdict::Allow { break_glass: None };
        }
        let related = facts
            .patients
            .iter()
            .any(|p| self.grants.relationship.contains(p));
        let glass = facts
            .patients
            .iter()
            .find_map(|p| self.grants.break_glass.get(p).copied());
        if !related && glass.is_none() {
            return Verdict::Deny(Denial::NoRelationship);
        }
        for p in &facts.patients {
            if self.opt_out_binds(p) {
                return Verdict::Deny(Denial::OptOut);
            }
            if self.grants.break_glass.contains_key(p) {
                continue;
            }
            if self.grants.org_denied.contains(p) {
                return Verdict::Deny(Denial::ConsentOrganisation);
            }
            if facts.labels.iter().any(|l| {
                self.grants
                    .label_denied
                    .get(l)
                    .is_some_and(|ps| ps.contains(p))
            }) {
                return Verdict::Deny(Denial::ConsentLabel);
            }
        }
        Verdict::Allow {
            break_glass: if related { None } else { glass },
        }
    }

    /// The index filter expressing `check` for every document; `None`: no restriction.
    pub fn search_filter(&self, f: &Fields) -> Option<Box<dyn Query>> {
        let org = match &self.who {
            Who::Unrestricted => return None,
            Who::System { org, .. } => {
                return Some(Box::new(TermQuery::new(
                    Term::from_field_text(f.author_org, org),
                    IndexRecordOption::Basic,
                )));
            }
            Who::User { org, .. } => org,
        };
        let visible = self.visible_labels();
        Some(match self.grants.cache_key {
            // The facts and the labels the role may not see determine the filter (the
            // organisation is the facts'; break-glass grants never come with a key).
            Some(facts) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (facts, org, &self.policy.gated, &visible).hash(&mut h);
                Box::new(CachedFilter::get_or_build(h.finish(), || {
                    self.user_filter(f, org, &visible)
                }))
            }
            None => self.user_filter(f, org, &visible),
        })
    }

    /// `search_filter` for a user of `org` who may see the gated labels in `visible`.
    fn user_filter(&self, f: &Fields, org: &str, visible: &BTreeSet<&str>) -> Box<dyn Query> {
        let term = |field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        let comp_set = |patients: &mut dyn Iterator<Item = &String>| -> Box<dyn Query> {
            any_of(
                patients
                    .map(|p| Term::from_field_text(f.compartment, &format!("Patient/{p}")))
                    .collect(),
            )
        };
        let label_term =
            |l: &str| Term::from_field_text(f.token, &join(&["_security", &ANY.to_string(), l]));
        let own = term(f.author_org, org);
        let hidden: Vec<Term> = self
            .policy
            .gated
            .iter()
            .filter(|l| !visible.contains(l.as_str()))
            .map(|l| label_term(l))
            .collect();

        let mut basis: Vec<&String> = self.grants.relationship.iter().collect();
        basis.extend(self.grants.break_glass.keys());
        let glass = &self.grants.break_glass;
        let blocked: Vec<&String> = self
            .grants
            .opted_out
            .iter()
            .filter(|p| self.opt_out_binds(p))
            .chain(
                self.grants
                    .org_denied
                    .iter()
                    .filter(|p| !glass.contains_key(*p)),
            )
            .collect();
        let mut patient_part: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, comp_set(&mut basis.into_iter()))];
        if !blocked.is_empty() {
            patient_part.push((Occur::MustNot, comp_set(&mut blocked.into_iter())));
        }
        for (label, patients) in self.grants.label_denied.iter() {
            let mut denying = patients
                .iter()
                .filter(|p| !glass.contains_key(*p))
                .peekable();
            if denying.peek().is_none() {
                continue;
            }
            patient_part.push((
                Occur::MustNot,
                Box::new(BooleanQuery::new(vec![
                    (
                        Occur::Must,
                        Box::new(TermQuery::new(label_term(label), IndexRecordOption::Basic))
                            as Box<dyn Query>,
                    ),
                    (Occur::Must, comp_set(&mut denying)),
                ])),
            ));
        }
        let visible_by_basis: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
            (Occur::Should, own),
            (Occur::Should, term(f.compartment, NO_COMPARTMENT)),
            (Occur::Should, Box::new(BooleanQuery::new(patient_part))),
        ]));
        let mut top: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, Box::new(AllQuery)),
            (Occur::Must, visible_by_basis),
        ];
        if !hidden.is_empty() {
            top.push((Occur::MustNot, any_of(hidden)));
        }
        Box::new(BooleanQuery::new(top))
    }

    /// The break-glass grants this request could use.
    pub fn break_glass_grants(&self) -> &HashMap<String, Uuid> {
        &self.grants.break_glass
    }
}
