//! Clinical content one trust records about one patient, coherent with the kind of trust:
//! a GP practice holds long-term conditions and repeat prescriptions, an acute trust holds
//! emergency attendances and admissions with observations and discharge summaries, and so on.

use base64::Engine as _;
use serde_json::{Value, json};
use time::{Duration, PrimitiveDateTime};

use super::bundle::{self, ACT_CODE, DMD, SNOMED, UCUM};
use super::data::{ConditionDef, DATA, ObservationDef};
use super::dates::{self, TODAY};
use super::people::{PatientRecord, Person};
use super::rng::Dice;
use super::trusts::{Clinician, Trust, TrustKind};

/// Most resources one patient record may contribute, Patient included, so a bundle of
/// `persons_per_bundle` records has a known ceiling. Observations are dropped first.
pub(crate) const MAX_RESOURCES_PER_RECORD: usize = 30;

pub(crate) struct RecordContext<'a> {
    pub(crate) trust: &'a Trust,
    pub(crate) person: &'a Person,
    pub(crate) record: &'a PatientRecord,
    pub(crate) patient_url: &'a str,
}

/// A resource ready to go into the bundle with its conditional-create key.
pub(crate) struct Pending {
    pub(crate) url: String,
    pub(crate) resource: Value,
    pub(crate) system: String,
    pub(crate) value: String,
}

#[derive(Default)]
pub(crate) struct ClinicalOutput {
    pub(crate) resources: Vec<Pending>,
    pub(crate) sensitive_conditions: usize,
}

struct Visit<'a> {
    url: String,
    id: String,
    class: (&'static str, &'static str),
    kind: (&'static str, &'static str),
    start: PrimitiveDateTime,
    end: PrimitiveDateTime,
    clinician: &'a Clinician,
    episode: Option<&'static ConditionDef>,
    episode_url: Option<String>,
}

const AMB: (&str, &str) = ("AMB", "ambulatory");
const EMER: (&str, &str) = ("EMER", "emergency");
const IMP: (&str, &str) = ("IMP", "inpatient encounter");
const HH: (&str, &str) = ("HH", "home health");
const VR: (&str, &str) = ("VR", "virtual");

const ED_VISIT: (&str, &str) = ("4525004", "Emergency department patient visit");
const ADMISSION: (&str, &str) = ("32485007", "Hospital admission");
const CONSULTATION: (&str, &str) = ("11429006", "Consultation");
const FOLLOW_UP: (&str, &str) = ("390906007", "Follow-up encounter");
const PROBLEM: (&str, &str) = ("185347001", "Encounter for problem");
const CHECK_UP: (&str, &str) = ("185349003", "Encounter for check up");
const TELEPHONE: (&str, &str) = ("185317003", "Telephone encounter");
const HOME_VISIT: (&str, &str) = ("439708006", "Home visit");

struct Ids<'a> {
    trust: &'a Trust,
    local: &'a str,
    counters: [u32; 7],
}

impl Ids<'_> {
    /// (system, value) of the next trust-local business identifier of this kind.
    fn next(&mut self, what: &str) -> (String, String) {
        let (slot, tag) = match what {
            "encounter" => (0, "E"),
            "condition" => (1, "C"),
            "observation" => (2, "O"),
            "medication-request" => (3, "RX"),
            "medication-statement" => (4, "MS"),
            "allergy-intolerance" => (5, "AL"),
            _ => (6, "DOC"),
        };
        self.counters[slot] += 1;
        (
            self.trust.system(what),
            format!("{}-{tag}{}", self.local, self.counters[slot]),
        )
    }
}

pub(crate) fn clinical_content(ctx: &RecordContext<'_>, dice: &mut Dice) -> ClinicalOutput {
    let mut ids = Ids {
        trust: ctx.trust,
        local: &ctx.record.local_id,
        counters: [0; 7],
    };
    let mut out = ClinicalOutput::default();
    let visits = plan_visits(ctx, dice);
    let patient = || bundle::reference(ctx.patient_url);

    for v in &visits {
        let mut enc = json!({
            "resourceType": "Encounter",
            "meta": bundle::meta("Encounter"),
            "identifier": [bundle::identifier(&ctx.trust.system("encounter"), &v.id)],
            "status": "finished",
            "class": bundle::coding(ACT_CODE, v.class.0, v.class.1),
            "type": [bundle::concept(SNOMED, v.kind.0, v.kind.1)],
            "subject": patient(),
            "participant": [{ "individual": v.clinician.reference() }],
            "period": { "start": dates::fhir_instant(v.start), "end": dates::fhir_instant(v.end) },
            "serviceProvider": ctx.trust.reference(),
        });
        if let (Some(c), Some(url)) = (v.episode, &v.episode_url) {
            enc["reasonCode"] = json!([bundle::concept(SNOMED, c.code, c.display)]);
            enc["diagnosis"] = json!([{ "condition": bundle::reference(url), "rank": 1 }]);
        }
        out.resources.push(Pending {
            url: v.url.clone(),
            resource: enc,
            system: ctx.trust.system("encounter"),
            value: v.id.clone(),
        });
    }

    // Conditions: the person's long-term ones this trust knows about, then episodes.
    let kind = ctx.trust.kind;
    let mut recorded: Vec<(&'static ConditionDef, String)> = Vec::new();
    for &(c, onset) in &ctx.person.chronic {
        if !c.recorded_by(kind) {
            continue;
        }
        let p = match (kind, c.sensitivity) {
            (TrustKind::MentalHealth, Some("mental-health" | "substance")) => 1.0,
            (TrustKind::Acute, Some("hiv")) => 1.0,
            (TrustKind::GpPractice, _) => 0.95,
            (TrustKind::Acute, _) => 0.5,
            (TrustKind::Community, _) => 0.6,
            (TrustKind::MentalHealth, _) => 0.3,
        };
        if !dice.chance(p) {
            continue;
        }
        // Recorded at the first visit after onset; if onset is later than every visit, the
        // trust learnt of it at its last visit and onset is taken as that day.
        let visit = visits
            .iter()
            .find(|v| v.start.date() >= onset)
            .unwrap_or_else(|| visits.last().expect("at least one visit"));
        let onset = onset.min(visit.start.date());
        let url = bundle::urn(dice.uuid());
        let (system, value) = ids.next("condition");
        let resource = condition(
            ctx,
            c,
            &value,
            &system,
            visit,
            "problem-list-item",
            onset,
            None,
        );
        recorded.push((c, url.clone()));
        out.sensitive_conditions += usize::from(c.sensitivity.is_some());
        out.resources.push(Pending {
            url,
            resource,
            system,
            value,
        });
    }
    for v in &visits {
        let (Some(c), Some(url)) = (v.episode, &v.episode_url) else {
            continue;
        };
        let (system, value) = ids.next("condition");
        // Episodes more than three months old are over.
        let abated = (v.end.date() < TODAY - Duration::days(90))
            .then(|| (v.end.date() + Duration::days(dice.between(3, 60))).min(TODAY));
        let resource = condition(
            ctx,
            c,
            &value,
            &system,
            v,
            "encounter-diagnosis",
            v.start.date(),
            abated,
        );
        recorded.push((c, url.clone()));
        out.sensitive_conditions += usize::from(c.sensitivity.is_some());
        out.resources.push(Pending {
            url: url.clone(),
            resource,
            system,
            value,
        });
    }

    medications(ctx, dice, &mut ids, &visits, &recorded, &mut out);
    allergies(ctx, dice, &mut ids, &visits, &mut out);
    documents(ctx, dice, &mut ids, &visits, &recorded, &mut out);
    observations(ctx, dice, &mut ids, &visits, &recorded, &mut out);

    out.resources.truncate(MAX_RESOURCES_PER_RECORD - 1);
    out
}

fn plan_visits<'a>(ctx: &RecordContext<'a>, dice: &mut Dice) -> Vec<Visit<'a>> {
    let trust = ctx.trust;
    let age = ctx.person.age;
    let count = match trust.kind {
        TrustKind::GpPractice => 1 + dice.weighted(&[0.35, 0.3, 0.2, 0.15], |w| *w).unwrap_or(0),
        _ => 1 + dice.weighted(&[0.55, 0.3, 0.15], |w| *w).unwrap_or(0),
    };
    let mut visits: Vec<Visit<'a>> = (0..count)
        .map(|_| {
            let (class, kind) = match trust.kind {
                TrustKind::GpPractice => {
                    if age >= 75 && dice.chance(0.15) {
                        (HH, HOME_VISIT)
                    } else if dice.chance(0.25) {
                        (VR, TELEPHONE)
                    } else if dice.chance(0.7) {
                        (AMB, PROBLEM)
                    } else {
                        (AMB, CHECK_UP)
                    }
                }
                TrustKind::Acute => match dice.unit() {
                    x if x < 0.4 => (EMER, ED_VISIT),
                    x if x < 0.65 => (IMP, ADMISSION),
                    x if x < 0.85 => (AMB, CONSULTATION),
                    _ => (AMB, FOLLOW_UP),
                },
                TrustKind::Community => {
                    if dice.chance(0.7) {
                        (HH, HOME_VISIT)
                    } else {
                        (AMB, CONSULTATION)
                    }
                }
                TrustKind::MentalHealth => match dice.unit() {
                    x if x < 0.4 => (AMB, CONSULTATION),
                    x if x < 0.7 => (AMB, FOLLOW_UP),
                    x if x < 0.9 => (HH, HOME_VISIT),
                    _ => (IMP, ADMISSION),
                },
            };
            // At least 15 days ago so that even a long admission has ended by "today".
            let day = dates::days_before_today(dice.between(15, 5 * 365));
            let (hour_from, hour_to, minutes) = match class.0 {
                "EMER" => (0, 23, dice.between(90, 600)),
                "IMP" => (0, 23, dice.between(1, 14) * 24 * 60 + dice.between(0, 600)),
                "HH" => (9, 16, dice.between(20, 60)),
                "VR" => (8, 17, dice.between(5, 15)),
                _ => (8, 16, dice.between(10, 40)),
            };
            let start = dates::at(
                day,
                dice.between(hour_from, hour_to) as u8,
                (dice.below(12) * 5) as u8,
            );
            let doctor_share = match (trust.kind, class.0) {
                (TrustKind::Community, _) | (_, "HH") => 0.2,
                (TrustKind::GpPractice, _) => 0.75,
                (TrustKind::MentalHealth, _) => 0.5,
                _ => 0.9,
            };
            let clinician = pick_clinician(trust, dice.chance(doctor_share), dice);
            Visit {
                url: bundle::urn(dice.uuid()),
                id: String::new(),
                class,
                kind,
                start,
                end: start + Duration::minutes(minutes),
                clinician,
                episode: None,
                episode_url: None,
            }
        })
        .collect();
    visits.sort_by_key(|v| v.start);

    let female = ctx.person.female;
    let pool: Vec<&'static ConditionDef> = DATA
        .conditions
        .iter()
        .filter(|c| !c.chronic && c.recorded_by(trust.kind) && c.fits(age, female))
        .collect();
    for (n, v) in visits.iter_mut().enumerate() {
        v.id = format!("{}-E{}", ctx.record.local_id, n + 1);
        let p = match (trust.kind, v.class.0) {
            (TrustKind::Acute, "EMER") => 0.9,
            (TrustKind::Acute, "IMP") => 1.0,
            (TrustKind::Acute, _) => 0.5,
            (TrustKind::GpPractice, "AMB") => 0.6,
            (TrustKind::GpPractice, _) => 0.4,
            (TrustKind::Community, _) => 0.35,
            (TrustKind::MentalHealth, _) => 0.15,
        };
        if dice.chance(p)
            && let Some(i) = dice.weighted(&pool, |c| c.weight)
        {
            v.episode = Some(pool[i]);
            v.episode_url = Some(bundle::urn(dice.uuid()));
        }
    }
    visits
}

fn pick_clinician<'a>(trust: &'a Trust, doctor: bool, dice: &mut Dice) -> &'a Clinician {
    let pool: Vec<&Clinician> = if doctor {
        trust.doctors().collect()
    } else {
        trust.nurses().collect()
    };
    if pool.is_empty() {
        return dice.pick(&trust.clinicians);
    }
    pool[dice.index(pool.len())]
}

#[allow(clippy::too_many_arguments)]
fn condition(
    ctx: &RecordContext<'_>,
    c: &ConditionDef,
    id: &str,
    system: &str,
    visit: &Visit<'_>,
    category: &str,
    onset: time::Date,
    abated: Option<time::Date>,
) -> Value {
    let (category_display, status, status_display) = match (category, abated) {
        ("problem-list-item", _) => ("Problem List Item", "active", "Active"),
        (_, Some(_)) => ("Encounter Diagnosis", "resolved", "Resolved"),
        (_, None) => ("Encounter Diagnosis", "active", "Active"),
    };
    let mut resource = json!({
        "resourceType": "Condition",
        "meta": bundle::meta("Condition"),
        "identifier": [bundle::identifier(system, id)],
        "clinicalStatus": bundle::status_concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", status, status_display),
        "verificationStatus": bundle::status_concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
        "category": [bundle::status_concept(
            "http://terminology.hl7.org/CodeSystem/condition-category", category, category_display)],
        "code": bundle::concept(SNOMED, c.code, c.display),
        "subject": bundle::reference(ctx.patient_url),
        "encounter": bundle::reference(&visit.url),
        "onsetDateTime": dates::fhir_date(onset),
        "recordedDate": dates::fhir_instant(visit.start),
        "recorder": visit.clinician.reference(),
    });
    if let Some(a) = abated {
        resource["abatementDateTime"] = json!(dates::fhir_date(a));
    }
    resource
}

fn medications(
    ctx: &RecordContext<'_>,
    dice: &mut Dice,
    ids: &mut Ids<'_>,
    visits: &[Visit<'_>],
    recorded: &[(&'static ConditionDef, String)],
    out: &mut ClinicalOutput,
) {
    let kind = ctx.trust.kind;
    let last = visits.last().expect("visits");
    let admission = visits.iter().find(|v| v.class.0 == "IMP");
    let mut seen: Vec<&str> = Vec::new();
    for (c, cond_url) in recorded.iter().filter(|(c, _)| c.chronic) {
        for code in &c.medications {
            if seen.contains(code) {
                continue;
            }
            seen.push(code);
            let med = DATA.medication(code);
            let mental = c.sensitivity == Some("mental-health");
            // Who prescribes: the GP for repeats, the mental health trust for psychiatric
            // medicines; everyone else records what the patient says they take.
            let prescribe = match kind {
                TrustKind::GpPractice => true,
                TrustKind::MentalHealth => mental,
                _ => false,
            };
            if prescribe {
                let (category, category_display) = if kind == TrustKind::GpPractice {
                    ("community", "Community")
                } else {
                    ("outpatient", "Outpatient")
                };
                let prescriber = pick_clinician(ctx.trust, true, dice);
                out.resources.push(medication_request(
                    ctx,
                    ids,
                    dice,
                    med,
                    last,
                    prescriber,
                    cond_url,
                    "active",
                    category,
                    category_display,
                ));
            } else {
                let context = match kind {
                    TrustKind::Acute => admission,
                    TrustKind::Community => dice.chance(0.5).then_some(&visits[0]),
                    TrustKind::MentalHealth => dice.chance(0.3).then_some(&visits[0]),
                    TrustKind::GpPractice => None,
                };
                if let Some(v) = context {
                    out.resources
                        .push(medication_statement(ctx, ids, dice, med, v, cond_url));
                }
            }
        }
    }
    if !matches!(kind, TrustKind::GpPractice | TrustKind::Acute) {
        return;
    }
    for v in visits {
        let (Some(c), Some(cond_url)) = (v.episode, &v.episode_url) else {
            continue;
        };
        for code in &c.medications {
            let med = DATA.medication(code);
            let status = if v.end.date() < TODAY - Duration::days(30) {
                "completed"
            } else {
                "active"
            };
            let (category, category_display) = match (kind, v.class.0) {
                (TrustKind::GpPractice, _) => ("community", "Community"),
                (_, "IMP") => ("inpatient", "Inpatient"),
                _ => ("outpatient", "Outpatient"),
            };
            let prescriber = if v.clinician.is_doctor() {
                v.clinician
            } else {
                pick_clinician(ctx.trust, true, dice)
            };
            out.resources.push(medication_request(
                ctx,
                ids,
                dice,
                med,
                v,
                prescriber,
                cond_url,
                status,
                category,
                category_display,
            ));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn medication_request(
    ctx: &RecordContext<'_>,
    ids: &mut Ids<'_>,
    dice: &mut Dice,
    med: &super::data::MedicationDef,
    visit: &Visit<'_>,
    prescriber: &Clinician,
    reason_url: &str,
    status: &str,
    category: &str,
    category_display: &str,
) -> Pending {
    let (system, value) = ids.next("medication-request");
    let (course, course_display) = if med.continuous {
        ("continuous", "Continuous long term therapy")
    } else {
        ("acute", "Short course (acute) therapy")
    };
    let resource = json!({
        "resourceType": "MedicationRequest",
        "meta": bundle::meta("MedicationRequest"),
        "identifier": [bundle::identifier(&system, &value)],
        "status": status,
        "intent": "order",
        "category": [bundle::status_concept(
            "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
            category, category_display)],
        "medicationCodeableConcept": bundle::concept(DMD, med.code, med.display),
        "subject": bundle::reference(ctx.patient_url),
        "encounter": bundle::reference(&visit.url),
        "authoredOn": dates::fhir_instant(visit.start + Duration::minutes(dice.between(5, 30))),
        "requester": prescriber.reference(),
        "reasonReference": [bundle::reference(reason_url)],
        "courseOfTherapyType": bundle::status_concept(
            "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
            course, course_display),
        "dosageInstruction": [{ "sequence": 1, "text": med.dosage }],
    });
    Pending {
        url: bundle::urn(dice.uuid()),
        resource,
        system,
        value,
    }
}

fn medication_statement(
    ctx: &RecordContext<'_>,
    ids: &mut Ids<'_>,
    dice: &mut Dice,
    med: &super::data::MedicationDef,
    visit: &Visit<'_>,
    reason_url: &str,
) -> Pending {
    let (system, value) = ids.next("medication-statement");
    let resource = json!({
        "resourceType": "MedicationStatement",
        "meta": bundle::meta("MedicationStatement"),
        "identifier": [bundle::identifier(&system, &value)],
        "status": "active",
        "medicationCodeableConcept": bundle::concept(DMD, med.code, med.display),
        "subject": bundle::reference(ctx.patient_url),
        "context": bundle::reference(&visit.url),
        "effectiveDateTime": dates::fhir_date(visit.start.date()),
        "dateAsserted": dates::fhir_instant(visit.start),
        "informationSource": bundle::reference(ctx.patient_url),
        "reasonReference": [bundle::reference(reason_url)],
        "dosage": [{ "sequence": 1, "text": med.dosage }],
    });
    Pending {
        url: bundle::urn(dice.uuid()),
        resource,
        system,
        value,
    }
}

fn allergies(
    ctx: &RecordContext<'_>,
    dice: &mut Dice,
    ids: &mut Ids<'_>,
    visits: &[Visit<'_>],
    out: &mut ClinicalOutput,
) {
    let first = &visits[0];
    let keep = match ctx.trust.kind {
        TrustKind::GpPractice => 1.0,
        TrustKind::Acute => 0.85,
        _ => 0.5,
    };
    let base = |system: &str, value: &str| {
        json!({
            "resourceType": "AllergyIntolerance",
            "meta": bundle::meta("AllergyIntolerance"),
            "identifier": [bundle::identifier(system, value)],
            "clinicalStatus": bundle::status_concept(
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
            "verificationStatus": bundle::status_concept(
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "confirmed", "Confirmed"),
            "patient": bundle::reference(ctx.patient_url),
            "encounter": bundle::reference(&first.url),
            "recordedDate": dates::fhir_instant(first.start),
            "recorder": first.clinician.reference(),
        })
    };
    if ctx.person.allergies.is_empty() {
        // GP systems record "no known allergy" explicitly; absence is not evidence of it.
        if ctx.trust.kind == TrustKind::GpPractice && dice.chance(0.5) {
            let (system, value) = ids.next("allergy-intolerance");
            let mut r = base(&system, &value);
            r["code"] = bundle::concept(SNOMED, "716186003", "No known allergy");
            out.resources.push(Pending {
                url: bundle::urn(dice.uuid()),
                resource: r,
                system,
                value,
            });
        }
        return;
    }
    for a in &ctx.person.allergies {
        if !dice.chance(keep) {
            continue;
        }
        let (system, value) = ids.next("allergy-intolerance");
        let mut r = base(&system, &value);
        let (manifestation, severity) = match a.criticality {
            "high" if dice.chance(0.4) => (("39579001", "Anaphylaxis"), "severe"),
            "high" => (("271807003", "Eruption of skin"), "moderate"),
            _ if dice.chance(0.5) => (("247472004", "Weal"), "mild"),
            _ => (("418290006", "Itching"), "mild"),
        };
        r["type"] = json!("allergy");
        r["category"] = json!([a.category]);
        r["criticality"] = json!(a.criticality);
        r["code"] = bundle::concept(SNOMED, a.code, a.display);
        r["reaction"] = json!([{
            "manifestation": [bundle::concept(SNOMED, manifestation.0, manifestation.1)],
            "severity": severity,
        }]);
        out.resources.push(Pending {
            url: bundle::urn(dice.uuid()),
            resource: r,
            system,
            value,
        });
    }
}

fn documents(
    ctx: &RecordContext<'_>,
    dice: &mut Dice,
    ids: &mut Ids<'_>,
    visits: &[Visit<'_>],
    recorded: &[(&'static ConditionDef, String)],
    out: &mut ClinicalOutput,
) {
    let mut written = 0;
    for v in visits {
        if written == 2 {
            break;
        }
        let kind = match (ctx.trust.kind, v.class.0) {
            (TrustKind::Acute | TrustKind::MentalHealth, "IMP") => Some(DISCHARGE),
            (TrustKind::Acute, "AMB") if dice.chance(0.5) => Some(LETTER),
            (TrustKind::MentalHealth, "AMB") if dice.chance(0.4) => Some(LETTER),
            (TrustKind::Community, _) if dice.chance(0.2) => Some(LETTER),
            _ => None,
        };
        let Some((code, display, title)) = kind else {
            continue;
        };
        written += 1;
        let (system, value) = ids.next("document-reference");
        let created = v.end + Duration::minutes(dice.between(30, 48 * 60));
        let text = letter_text(ctx, v, title, recorded);
        let attachment = if dice.chance(0.85) {
            json!({
                "contentType": "text/plain",
                "language": "en-GB",
                "data": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
                "size": text.len(),
                "title": title,
                "creation": dates::fhir_instant(created),
            })
        } else {
            // Some trusts share a link to their document store instead of the content.
            json!({
                "contentType": "application/pdf",
                "url": format!(
                    "https://docs.{}.example.nhs.uk/documents/{value}",
                    ctx.trust.ods.to_lowercase()
                ),
                "title": title,
                "creation": dates::fhir_instant(created),
            })
        };
        out.resources.push(Pending {
            url: bundle::urn(dice.uuid()),
            resource: json!({
                "resourceType": "DocumentReference",
                "meta": bundle::meta("DocumentReference"),
                "identifier": [bundle::identifier(&system, &value)],
                "status": "current",
                "docStatus": "final",
                "type": bundle::concept(SNOMED, code, display),
                "subject": bundle::reference(ctx.patient_url),
                "date": dates::fhir_instant(created),
                "author": [v.clinician.reference(), ctx.trust.reference()],
                "custodian": ctx.trust.reference(),
                "description": title,
                "content": [{ "attachment": attachment }],
                "context": {
                    "encounter": [bundle::reference(&v.url)],
                    "period": {
                        "start": dates::fhir_instant(v.start),
                        "end": dates::fhir_instant(v.end),
                    },
                },
            }),
            system,
            value,
        });
    }
}

const DISCHARGE: (&str, &str, &str) = ("373942005", "Discharge summary", "Discharge summary");
const LETTER: (&str, &str, &str) = ("823691000000103", "Clinical letter", "Clinic letter");

fn letter_text(
    ctx: &RecordContext<'_>,
    v: &Visit<'_>,
    title: &str,
    recorded: &[(&'static ConditionDef, String)],
) -> String {
    let r = ctx.record;
    let diagnoses: Vec<&str> = recorded.iter().map(|(c, _)| c.display).collect();
    format!(
        "{title}\n{trust}\n\nPatient: {given} {family}\nDate of birth: {dob}\nNHS number: {nhs}\n\
         Hospital number: {local}\n\nSeen: {start} to {end}\nClinician: {clin}\n\n\
         Diagnoses: {diag}\n\nPlan: continue current treatment; GP to review in 2 weeks.\n",
        trust = ctx.trust.name,
        given = r.given,
        family = r.family,
        dob = dates::fhir_date(r.birth),
        nhs = r.nhs.as_deref().unwrap_or("not recorded"),
        local = r.local_id,
        start = dates::fhir_instant(v.start),
        end = dates::fhir_instant(v.end),
        clin = v.clinician.display_name(),
        diag = if diagnoses.is_empty() {
            "none recorded".to_owned()
        } else {
            diagnoses.join("; ")
        },
    )
}

fn observations(
    ctx: &RecordContext<'_>,
    dice: &mut Dice,
    ids: &mut Ids<'_>,
    visits: &[Visit<'_>],
    recorded: &[(&'static ConditionDef, String)],
    out: &mut ClinicalOutput,
) {
    let adult = ctx.person.age >= 16;
    let kind = ctx.trust.kind;
    let condition_keys = |chronic_only: bool| -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = Vec::new();
        for (c, _) in recorded.iter().filter(|(c, _)| c.chronic || !chronic_only) {
            for k in &c.observations {
                if !keys.contains(k) {
                    keys.push(k);
                }
            }
        }
        keys
    };
    for (n, v) in visits.iter().enumerate() {
        let mut keys: Vec<&'static str> = Vec::new();
        let mut add = |k: &'static str| {
            if !keys.contains(&k) {
                keys.push(k);
            }
        };
        match (kind, v.class.0) {
            (_, "EMER" | "IMP") if !adult => {
                ["hr", "rr", "temp", "spo2"].into_iter().for_each(&mut add)
            }
            (TrustKind::MentalHealth, "IMP") => ["hr", "bp", "temp", "weight"]
                .into_iter()
                .for_each(&mut add),
            (_, "EMER") => {
                ["hr", "rr", "temp", "spo2", "bp"]
                    .into_iter()
                    .for_each(&mut add);
                if dice.chance(0.7) {
                    ["hb", "wbc", "crp"].into_iter().for_each(&mut add);
                }
            }
            (_, "IMP") => [
                "hr",
                "rr",
                "temp",
                "spo2",
                "bp",
                "hb",
                "wbc",
                "plt",
                "sodium",
                "potassium",
                "creatinine",
                "crp",
            ]
            .into_iter()
            .for_each(&mut add),
            (TrustKind::GpPractice, "AMB") if adult => {
                if dice.chance(0.6) {
                    add("bp");
                }
                if dice.chance(0.25) {
                    add("weight");
                    add("bmi");
                }
            }
            (TrustKind::GpPractice, "AMB") if dice.chance(0.3) => add("weight"),
            (TrustKind::GpPractice, "HH") if adult => add("bp"),
            (TrustKind::Community, "HH") if adult => {
                add("bp");
                add("hr");
                if dice.chance(0.7) {
                    add("spo2");
                }
                if dice.chance(0.3) {
                    add("temp");
                }
            }
            (TrustKind::Community, "AMB") if adult => {
                add("bp");
                add("weight");
            }
            (TrustKind::Acute, "AMB") if adult && dice.chance(0.5) => add("bp"),
            _ => {}
        }
        if let Some(c) = v.episode {
            c.observations.iter().for_each(|k| add(k));
        }
        // Long-term condition monitoring: the GP at its latest contact, the mental health
        // trust at every clinic appointment.
        let monitor = match kind {
            TrustKind::GpPractice => n + 1 == visits.len(),
            TrustKind::MentalHealth => v.class.0 == "AMB",
            _ => false,
        };
        if monitor {
            condition_keys(true).into_iter().for_each(&mut add);
        }
        for key in keys {
            if !adult && matches!(key, "bp" | "bmi") {
                continue;
            }
            let (system, value) = ids.next("observation");
            let resource = observation(ctx, dice, v, key, &system, &value);
            out.resources.push(Pending {
                url: bundle::urn(dice.uuid()),
                resource,
                system,
                value,
            });
        }
    }
}

fn category(code: &str) -> Value {
    let display = match code {
        "vital-signs" => "Vital Signs",
        "laboratory" => "Laboratory",
        "survey" => "Survey",
        _ => "Social History",
    };
    json!([bundle::status_concept(
        "http://terminology.hl7.org/CodeSystem/observation-category",
        code,
        display
    )])
}

fn quantity(value: f64, decimals: u32, unit: &str) -> Value {
    let scale = 10f64.powi(decimals as i32);
    let rounded = (value * scale).round() / scale;
    let value = if decimals == 0 {
        json!(rounded as i64)
    } else {
        json!(rounded)
    };
    json!({ "value": value, "unit": unit, "system": UCUM, "code": unit })
}

fn codeable(def: &ObservationDef) -> Value {
    let codings: Vec<Value> = def
        .codings
        .iter()
        .map(|(s, c, d)| bundle::coding(s, c, d))
        .collect();
    json!({ "coding": codings, "text": def.codings[0].2 })
}

fn observation(
    ctx: &RecordContext<'_>,
    dice: &mut Dice,
    v: &Visit<'_>,
    key: &str,
    system: &str,
    id: &str,
) -> Value {
    let taken = v.start + Duration::minutes(dice.between(5, 45));
    let mut r = json!({
        "resourceType": "Observation",
        "meta": bundle::meta("Observation"),
        "identifier": [bundle::identifier(system, id)],
        "status": "final",
        "subject": bundle::reference(ctx.patient_url),
        "encounter": bundle::reference(&v.url),
        "effectiveDateTime": dates::fhir_instant(taken),
    });
    if key == "bp" {
        let systolic = dice.between(100, 175);
        let diastolic = dice.between(58, (systolic - 30).min(105));
        r["category"] = category("vital-signs");
        r["code"] = json!({
            "coding": [
                bundle::coding(bundle::LOINC, "85354-9", "Blood pressure panel with all children optional"),
                bundle::coding(SNOMED, "75367002", "Blood pressure"),
            ],
            "text": "Blood pressure",
        });
        r["performer"] = json!([v.clinician.reference()]);
        r["component"] = json!([
            {
                "code": { "coding": [
                    bundle::coding(bundle::LOINC, "8480-6", "Systolic blood pressure"),
                    bundle::coding(SNOMED, "271649006", "Systolic blood pressure"),
                ]},
                "valueQuantity": quantity(systolic as f64, 0, "mm[Hg]"),
            },
            {
                "code": { "coding": [
                    bundle::coding(bundle::LOINC, "8462-4", "Diastolic blood pressure"),
                    bundle::coding(SNOMED, "271650006", "Diastolic blood pressure"),
                ]},
                "valueQuantity": quantity(diastolic as f64, 0, "mm[Hg]"),
            },
        ]);
        return r;
    }
    let def = DATA.observation(key);
    let person = ctx.person;
    let height_m = person.height_cm / 100.0;
    // Weight and BMI follow the person's build so the two agree with each other.
    let weight = if person.age < 16 {
        (3.5 + f64::from(person.age) * 3.2) * dice.uniform(0.9, 1.15)
    } else {
        person.bmi * height_m * height_m + dice.uniform(-2.0, 2.0)
    };
    let value = match key {
        "weight" => weight,
        "bmi" => weight / (height_m * height_m),
        "height" => person.height_cm,
        "hr" if person.age < 16 => dice.uniform(80.0, 130.0),
        "rr" if person.age < 16 => dice.uniform(18.0, 30.0),
        _ => dice.uniform(def.low, def.high),
    };
    r["category"] = category(def.category);
    r["code"] = codeable(def);
    r["valueQuantity"] = quantity(value, def.decimals, def.unit);
    if def.category == "laboratory" {
        // Results come from the trust's pathology service some hours after the sample.
        r["issued"] = json!(dates::fhir_instant(
            taken + Duration::minutes(dice.between(60, 360))
        ));
        r["performer"] = json!([ctx.trust.reference()]);
    } else {
        r["performer"] = json!([v.clinician.reference()]);
    }
    r
}
