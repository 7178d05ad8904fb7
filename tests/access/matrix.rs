//! The access matrix: callers (roles × organisations, and trusts' systems) × people (with and
//! without a care relationship, under every consent state) × resources with and without
//! sensitivity labels × read, vread, history, search, compartment search, `_include` and
//! `_revinclude` — each answer compared with `oracle`, written here from the policy as
//! documented in consent-policies/README.md, not from the server's code.

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt;
use serde_json::Value;

use crate::common::TestApp;
use crate::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rel {
    /// No care relationship of RX2 with the person.
    None,
    /// RX2 saw the person ten days ago.
    Recent,
    /// RX2 saw the person three years ago (outside the 365-day window).
    Old,
    /// RX1 referred the person to RX2 (an open referral).
    Referral,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Consent {
    None,
    OptOut,
    DenyHiv,
    DenyRx2,
    /// An opt-out whose period ended.
    Expired,
}

struct Person {
    id: String,
    rel: Rel,
    consent: Consent,
    /// Registered with GP practice A81001.
    gp: bool,
}

#[derive(Debug, Clone)]
struct Res {
    rtype: String,
    id: String,
    author: &'static str,
    labels: Vec<&'static str>,
    person: Option<usize>,
}

impl Res {
    fn key(&self) -> String {
        format!("{}/{}", self.rtype, self.id)
    }
}

const CALLERS: &[Who] = &[
    Who {
        label: "doctor-rx2",
        system: false,
        role: "R8000",
        org: "RX2",
        activities: &["B0360", "B0380"],
    },
    Who {
        label: "sensitive-rx2",
        system: false,
        role: "R8000",
        org: "RX2",
        activities: &["B0360", "B1611"],
    },
    Who {
        label: "nurse-rx2",
        system: false,
        role: "R8001",
        org: "RX2",
        activities: &["B0360"],
    },
    Who {
        label: "student-rx2",
        system: false,
        role: "R8004",
        org: "RX2",
        activities: &["B0360", "B1611"],
    },
    Who {
        label: "privacy-officer-rx2",
        system: false,
        role: "R0001",
        org: "RX2",
        activities: &["B0360"],
    },
    Who {
        label: "no-activity-rx2",
        system: false,
        role: "R8000",
        org: "RX2",
        activities: &[],
    },
    Who {
        label: "doctor-rx1",
        system: false,
        role: "R8003",
        org: "RX1",
        activities: &["B0360"],
    },
    Who {
        label: "gp-a81001",
        system: false,
        role: "R8000",
        org: "A81001",
        activities: &["B0360", "B1611"],
    },
    Who {
        label: "system-rx1",
        system: true,
        role: "",
        org: "RX1",
        activities: &[],
    },
    Who {
        label: "system-rx2",
        system: true,
        role: "",
        org: "RX2",
        activities: &[],
    },
];

/// The documented rule. `None`: the role may not read at all (403); `Some(visible)`.
fn oracle(who: &Who, r: &Res, people: &[Person]) -> Option<bool> {
    if who.system {
        return Some(r.author == who.org);
    }
    let has = |a: &str| who.activities.contains(&a);
    let clinician = matches!(who.role, "R8000" | "R8001" | "R8003");
    let student = who.role == "R8004";
    if !((clinician || student) && has("B0360")) {
        return None;
    }
    let sensitive_ok = has("B1611") && !student;
    for l in &r.labels {
        let ok = match *l {
            "R" => clinician || sensitive_ok,
            "HIV" | "PSY" | "ETH" | "STD" | "SEX" | "SDV" | "V" => sensitive_ok,
            _ => true,
        };
        if !ok {
            return Some(false);
        }
    }
    if r.author == who.org {
        return Some(true);
    }
    let Some(p) = r.person.map(|i| &people[i]) else {
        return Some(true);
    };
    let related = match who.org {
        // RX1 registered every person (it wrote their Patient record).
        "RX1" => true,
        "A81001" => p.gp,
        "RX2" => matches!(p.rel, Rel::Recent | Rel::Referral),
        _ => false,
    };
    if !related {
        return Some(false);
    }
    Some(match p.consent {
        Consent::OptOut => false,
        Consent::DenyRx2 => who.org != "RX2",
        Consent::DenyHiv => !r.labels.contains(&"HIV"),
        Consent::None | Consent::Expired => true,
    })
}

async fn population(app: &TestApp) -> (Vec<Person>, Vec<Res>) {
    let mut people = Vec::new();
    let mut res = Vec::new();
    let rels = [Rel::None, Rel::Recent, Rel::Old, Rel::Referral];
    let consents = [
        Consent::None,
        Consent::OptOut,
        Consent::DenyHiv,
        Consent::DenyRx2,
        Consent::Expired,
    ];
    let push = |res: &mut Vec<Res>,
                v: &Value,
                author: &'static str,
                labels: Vec<&'static str>,
                person: Option<usize>| {
        res.push(Res {
            rtype: v["resourceType"].as_str().unwrap().to_string(),
            id: v["id"].as_str().unwrap().to_string(),
            author,
            labels,
            person,
        });
    };
    for rel in rels {
        for consent_state in consents {
            let i = people.len();
            let gp = i % 2 == 0;
            let p = create_as(
                app,
                "RX1",
                patient(&format!("Person{i}"), gp.then_some("A81001")),
            )
            .await;
            let pid = p["id"].as_str().unwrap().to_string();
            push(&mut res, &p, "RX1", vec![], Some(i));
            let o = create_as(app, "RX1", observation(&pid, &[])).await;
            push(&mut res, &o, "RX1", vec![], Some(i));
            let v = create_as(
                app,
                "RX1",
                observation(
                    &pid,
                    &[(
                        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "V",
                    )],
                ),
            )
            .await;
            push(&mut res, &v, "RX1", vec!["V"], Some(i));
            let hiv = create_as(app, "RX1", condition_snomed(&pid, "86406008")).await;
            push(&mut res, &hiv, "RX1", vec!["HIV", "R"], Some(i));
            let psy = create_as(app, "RX1", condition_icd10(&pid, "F32.1")).await;
            push(&mut res, &psy, "RX1", vec!["PSY", "R"], Some(i));
            match rel {
                Rel::None => {}
                Rel::Recent => {
                    let e =
                        create_as(app, "RX2", encounter(&pid, &days_ago(10), &days_ago(9))).await;
                    push(&mut res, &e, "RX2", vec![], Some(i));
                }
                Rel::Old => {
                    let e = create_as(
                        app,
                        "RX2",
                        encounter(&pid, &days_ago(1200), &days_ago(1199)),
                    )
                    .await;
                    push(&mut res, &e, "RX2", vec![], Some(i));
                }
                Rel::Referral => {
                    let s = create_as(app, "RX1", referral(&pid, "RX2")).await;
                    push(&mut res, &s, "RX1", vec![], Some(i));
                }
            }
            let c = match consent_state {
                Consent::None => None,
                Consent::OptOut => Some(consent(&pid, &[], &[], None)),
                Consent::DenyHiv => Some(consent(&pid, &["HIV"], &[], None)),
                Consent::DenyRx2 => Some(consent(&pid, &[], &["RX2"], None)),
                Consent::Expired => Some(consent(&pid, &[], &[], Some("2021-01-01"))),
            };
            if let Some(c) = c {
                let c = create_as(app, "RX1", c).await;
                push(&mut res, &c, "RX1", vec![], Some(i));
            }
            people.push(Person {
                id: pid,
                rel,
                consent: consent_state,
                gp,
            });
        }
    }
    // A resource in no patient compartment.
    let org = create_as(
        app,
        "RX1",
        serde_json::json!({"resourceType": "Organization", "name": "Ward 7",
            "identifier": [{"system": ODS, "value": "RX1W7"}]}),
    )
    .await;
    push(&mut res, &org, "RX1", vec![], None);
    (people, res)
}

fn bundle_keys(bundle: &Value, mode: &str) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Expected keys of a search (`None`: the role may not search at all).
type Expected = Option<BTreeSet<String>>;

struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

#[tokio::test]
async fn every_caller_sees_exactly_what_the_policy_allows() {
    let app = TestApp::spawn().await;
    let (people, res) = population(&app).await;
    let by_key: HashMap<String, &Res> = res.iter().map(|r| (r.key(), r)).collect();
    let mut failures = Failures(Vec::new());
    let mut request_ids: Vec<String> = Vec::new();
    let mut leaks = 0;
    let mut wrongful = 0;
    let mut expected_statuses: HashMap<u16, usize> = HashMap::new();

    for who in CALLERS {
        let token = who.token(&app);
        // Instance interactions, a few at a time.
        let mut jobs = Vec::new();
        for r in &res {
            for (kind, path) in [
                ("read", r.key()),
                ("vread", format!("{}/_history/1", r.key())),
                ("history", format!("{}/_history", r.key())),
            ] {
                let rid = format!("{}-{kind}-{}", who.label, r.key());
                jobs.push((r, kind, path, rid));
            }
        }
        let results: Vec<_> =
            futures_util::stream::iter(jobs.into_iter().map(|(r, kind, path, rid)| {
                let token = token.clone();
                let app = &app;
                async move {
                    let (status, body) =
                        send(app, &token, reqwest::Method::GET, &path, None, &rid).await;
                    (r, kind, path, rid, status, body)
                }
            }))
            .buffer_unordered(6)
            .collect()
            .await;
        for (r, kind, path, rid, status, body) in results {
            request_ids.push(rid);
            let expected = match oracle(who, r, &people) {
                None => 403,
                Some(true) => 200,
                Some(false) => 404,
            };
            *expected_statuses.entry(expected).or_default() += 1;
            if status == 200 && expected != 200 {
                leaks += 1;
            }
            if status != 200 && expected == 200 {
                wrongful += 1;
            }
            failures.check(status == expected, || {
                format!(
                    "{} {kind} {path}: expected {expected}, got {status} ({:?})",
                    who.label, r
                )
            });
            if expected == 404 {
                // A denial reads exactly like a missing resource.
                failures.check(body["issue"][0]["code"] == "not-found", || {
                    format!(
                        "{} {path}: denial body differs from not-found: {body}",
                        who.label
                    )
                });
            }
        }

        // Searches: per person (search parameter and compartment), over everything, with
        // _include and _revinclude.
        let expected_of = |rtype: &str, person: Option<usize>| -> Option<BTreeSet<String>> {
            let mut out = BTreeSet::new();
            for r in res
                .iter()
                .filter(|r| r.rtype == rtype && (person.is_none() || r.person == person))
            {
                match oracle(who, r, &people) {
                    None => return None,
                    Some(true) => {
                        out.insert(r.key());
                    }
                    Some(false) => {}
                }
            }
            Some(out)
        };
        let mut searches: Vec<(String, Expected, Expected)> = Vec::new();
        for (i, p) in people.iter().enumerate() {
            searches.push((
                format!("Condition?subject=Patient/{}&_total=accurate", p.id),
                expected_of("Condition", Some(i)),
                Some(BTreeSet::new()),
            ));
            searches.push((
                format!("Patient/{}/Observation?_total=accurate", p.id),
                expected_of("Observation", Some(i)),
                Some(BTreeSet::new()),
            ));
        }
        let visible = |key: &str| oracle(who, by_key[key], &people) == Some(true);
        let patient_key = |r: &Res| format!("Patient/{}", people[r.person.unwrap()].id);
        let observations = expected_of("Observation", None);
        let obs_includes = observations.as_ref().map(|obs| {
            obs.iter()
                .map(|k| patient_key(by_key[k.as_str()]))
                .filter(|k| visible(k))
                .collect::<BTreeSet<_>>()
        });
        searches.push((
            "Observation?_count=1000&_total=accurate&_include=Observation:subject".into(),
            observations,
            obs_includes,
        ));
        let patients = expected_of("Patient", None);
        let rev = patients.as_ref().map(|ps| {
            res.iter()
                .filter(|r| {
                    r.rtype == "Condition" && visible(&r.key()) && ps.contains(&patient_key(r))
                })
                .map(Res::key)
                .collect::<BTreeSet<_>>()
        });
        searches.push((
            "Patient?_count=1000&_total=accurate&_revinclude=Condition:subject".into(),
            patients,
            rev,
        ));
        // _has must not reveal a person through a condition the caller may not see.
        let with_visible_hiv = expected_of("Patient", None).map(|ps| {
            res.iter()
                .filter(|r| r.labels.contains(&"HIV") && visible(&r.key()))
                .map(patient_key)
                .filter(|k| ps.contains(k))
                .collect::<BTreeSet<_>>()
        });
        searches.push((
            "Patient?_has:Condition:subject:code=http://snomed.info/sct|86406008&_total=accurate"
                .into(),
            with_visible_hiv,
            Some(BTreeSet::new()),
        ));
        searches.push((
            "Organization?_total=accurate".into(),
            expected_of("Organization", None),
            Some(BTreeSet::new()),
        ));
        for (n, (path, matches, includes)) in searches.into_iter().enumerate() {
            let rid = format!("{}-search-{n}", who.label);
            let (status, body) = send(&app, &token, reqwest::Method::GET, &path, None, &rid).await;
            request_ids.push(rid);
            match (matches, includes) {
                (Some(m), Some(inc)) => {
                    failures.check(status == 200, || {
                        format!("{} {path}: status {status}: {body}", who.label)
                    });
                    if status != 200 {
                        continue;
                    }
                    let got = bundle_keys(&body, "match");
                    leaks += got.difference(&m).count();
                    wrongful += m.difference(&got).count();
                    failures.check(got == m, || {
                        format!(
                            "{} {path}: matches differ: extra {:?}, missing {:?}",
                            who.label,
                            got.difference(&m).collect::<Vec<_>>(),
                            m.difference(&got).collect::<Vec<_>>()
                        )
                    });
                    failures.check(body["total"] == m.len(), || {
                        format!(
                            "{} {path}: total {} but {} visible",
                            who.label,
                            body["total"],
                            m.len()
                        )
                    });
                    let got_inc = bundle_keys(&body, "include");
                    leaks += got_inc.difference(&inc).count();
                    wrongful += inc.difference(&got_inc).count();
                    failures.check(got_inc == inc, || {
                        format!(
                            "{} {path}: includes differ: extra {:?}, missing {:?}",
                            who.label,
                            got_inc.difference(&inc).collect::<Vec<_>>(),
                            inc.difference(&got_inc).collect::<Vec<_>>()
                        )
                    });
                }
                _ => failures.check(status == 403, || {
                    format!("{} {path}: expected 403, got {status}", who.label)
                }),
            }
        }
    }

    assert!(
        failures.0.is_empty(),
        "{} leaks, {} wrongful denials; {} mismatches, first 30:\n{}",
        leaks,
        wrongful,
        failures.0.len(),
        failures
            .0
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!((leaks, wrongful), (0, 0));
    // The matrix exercises every outcome in earnest.
    for (status, at_least) in [(200, 500), (404, 500), (403, 300)] {
        let n = expected_statuses.get(&status).copied().unwrap_or(0);
        assert!(
            n >= at_least,
            "only {n} interactions expected {status}: {expected_statuses:?}"
        );
    }

    // One audit row per request, denials included.
    let audited: Vec<String> = audited_request_ids(&app).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &audited {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = request_ids
        .iter()
        .filter(|id| counts.get(id.as_str()) != Some(&1))
        .collect();
    assert!(
        missing.is_empty(),
        "{} requests without exactly one audit row, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
