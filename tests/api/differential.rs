//! The index against a plain reference evaluator: for a few thousand generated queries over a
//! generated population, searching the index must return exactly the resources that iterating
//! every stored resource and applying the parameter semantics directly returns.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use shcr::search::engine::Engine;
use shcr::search::extract::{IndexValue, extract};
use shcr::search::matching::value_matches;
use shcr::search::params::ParamType;
use shcr::search::query::{Clause, parse};
use shcr::store::Store;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::common::TestApp;

struct Stored {
    resource_type: String,
    id: String,
    values: HashMap<String, Vec<IndexValue>>,
}

fn reference_match(r: &Stored, clause: &Clause, base: &str, now: i64) -> bool {
    match clause {
        Clause::Values {
            code,
            values,
            negated,
            ..
        } => {
            let any = r.values.get(code).is_some_and(|vs| {
                vs.iter()
                    .any(|v| values.iter().any(|p| value_matches(v, p, base, now)))
            });
            any != *negated
        }
        Clause::Missing { code, missing } => r.values.contains_key(code) != *missing,
        other => panic!("the generator does not make {other:?}"),
    }
}

fn encode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_string()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}

fn date_text(micros: i64, precision: usize) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    let s = match precision {
        0 => t.format(format_description!("[year]")).ok()?,
        1 => t.format(format_description!("[year]-[month]")).ok()?,
        2 => t.format(format_description!("[year]-[month]-[day]")).ok()?,
        _ => t
            .format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()?,
    };
    Some(s)
}

/// One `name=value` drawn from a real value of `code` on some resource.
fn parameter(rng: &mut StdRng, code: &str, t: ParamType, v: &IndexValue) -> Option<String> {
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];
    let prefix = prefixes[rng.random_range(0..prefixes.len())];
    Some(match (t, v) {
        (ParamType::String, IndexValue::String { normalised, exact }) => {
            let chars: Vec<char> = normalised.chars().collect();
            match rng.random_range(0..3) {
                0 => {
                    let n = rng.random_range(1..=chars.len().max(1));
                    format!(
                        "{code}={}",
                        encode(&escape(
                            &chars[..n.min(chars.len())].iter().collect::<String>()
                        ))
                    )
                }
                1 if chars.len() > 2 => {
                    let a = rng.random_range(0..chars.len() - 1);
                    let b = rng.random_range(a + 1..=chars.len());
                    format!(
                        "{code}:contains={}",
                        encode(&escape(&chars[a..b].iter().collect::<String>()))
                    )
                }
                _ => format!("{code}:exact={}", encode(&escape(exact))),
            }
        }
        (
            ParamType::Token,
            IndexValue::Token {
                system,
                code: Some(c),
                ..
            },
        ) => {
            let system = system.clone().unwrap_or_default();
            match rng.random_range(0..4) {
                0 => format!("{code}={}", encode(&escape(c))),
                1 => format!("{code}={}|{}", encode(&escape(&system)), encode(&escape(c))),
                2 if !system.is_empty() => format!("{code}={}|", encode(&escape(&system))),
                _ => format!("{code}:not={}", encode(&escape(c))),
            }
        }
        (
            ParamType::Reference,
            IndexValue::Reference {
                resource_type: Some(rt),
                id: Some(id),
                url,
                ..
            },
        ) if !url.contains("://") => {
            if rng.random_bool(0.5) {
                format!("{code}={rt}/{id}")
            } else {
                format!("{code}={id}")
            }
        }
        (ParamType::Date, IndexValue::Date { low, high }) => {
            let anchor = if rng.random_bool(0.5) { *low } else { *high };
            if anchor == i64::MIN || anchor == i64::MAX {
                return None;
            }
            let text = date_text(anchor, rng.random_range(0..4))?;
            format!("{code}={prefix}{}", encode(&text))
        }
        (
            ParamType::Quantity,
            IndexValue::Quantity {
                value,
                system,
                code: unit,
                ..
            },
        ) => {
            let shown = format!("{value}");
            match (rng.random_bool(0.5), system, unit) {
                (true, Some(s), Some(u)) => {
                    format!("{code}={prefix}{shown}|{}|{}", encode(s), encode(u))
                }
                _ => format!("{code}={prefix}{shown}"),
            }
        }
        (ParamType::Number, IndexValue::Number { value, .. }) => format!("{code}={prefix}{value}"),
        (ParamType::Uri, IndexValue::Uri(u)) => {
            if rng.random_bool(0.5) {
                format!("{code}={}", encode(u))
            } else {
                let cut = u.rfind('/').unwrap_or(u.len());
                format!("{code}:below={}", encode(&u[..cut]))
            }
        }
        _ => return None,
    })
}

#[tokio::test]
async fn index_search_agrees_with_a_reference_evaluator() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = shcr::generate::GenerateOptions {
        persons: 40,
        trusts: 3,
        seed: 5,
        ..Default::default()
    };
    shcr::generate::write_to_dir(&opts, dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
    let repo = shcr::interactions::Repository::new(Store::from_pool(app.pool.clone()));
    let author = shcr::store::Author {
        kind: "system",
        id: "test".into(),
        org: Some("RX1".into()),
        request_id: None,
    };
    let files = shcr::import::collect_files(&[dir.path().to_path_buf()]).unwrap();
    let report =
        shcr::import::import_files(&repo, &author, files, 2, &indicatif::ProgressBar::hidden())
            .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let registry = app.search.registry.clone();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT h.resource_type, h.id, v.content::text FROM resource_head h
         JOIN resource_version v USING (resource_type, id, version_id) WHERE NOT h.deleted",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let stored: Vec<Stored> = rows
        .iter()
        .map(|(t, id, content)| {
            let resource: Value = serde_json::from_str(content).unwrap();
            let mut values: HashMap<String, Vec<IndexValue>> = HashMap::new();
            for e in extract(&registry, &resource) {
                values
                    .entry(e.param.code.clone())
                    .or_default()
                    .extend(e.values);
            }
            Stored {
                resource_type: t.clone(),
                id: id.clone(),
                values,
            }
        })
        .collect();
    let types = [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "MedicationRequest",
        "AllergyIntolerance",
        "Practitioner",
        "Organization",
    ];
    let engine = Engine {
        index: &app.search,
        store: &Store::from_pool(app.pool.clone()),
    };
    let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let mut rng = StdRng::seed_from_u64(20261125);
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut nonempty = 0;
    // Queries pairing a date with a reference or token: the plan checks such dates on the
    // packed values of the documents the other clause selects, not with term ranges.
    let mut dates_beside_narrow = 0;
    while checked < 2000 {
        let t = types[rng.random_range(0..types.len())];
        let of_type: Vec<&Stored> = stored.iter().filter(|s| s.resource_type == t).collect();
        if of_type.is_empty() {
            continue;
        }
        let mut params = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            let r = of_type[rng.random_range(0..of_type.len())];
            let candidates: Vec<(&String, &Vec<IndexValue>)> = r.values.iter().collect();
            if candidates.is_empty() {
                continue;
            }
            let (code, values) = candidates[rng.random_range(0..candidates.len())];
            let Some(param) = registry.get(t, code) else {
                continue;
            };
            if rng.random_range(0..12) == 0 {
                params.push(format!("{code}:missing={}", rng.random_bool(0.5)));
                continue;
            }
            let v = &values[rng.random_range(0..values.len())];
            if let Some(p) = parameter(&mut rng, code, param.param_type, v) {
                params.push(p);
            }
        }
        if params.is_empty() {
            continue;
        }
        let query_string = params.join("&");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query_string).unwrap();
        let q = match parse(&registry, vec![t.to_string()], &pairs, false) {
            Ok(q) => q,
            Err(e) => panic!("{t}?{query_string}: generated query refused: {e:?}"),
        };
        let expected: BTreeSet<String> = of_type
            .iter()
            .filter(|r| {
                q.clauses
                    .iter()
                    .all(|c| reference_match(r, c, &app.search.base, now))
            })
            .map(|r| r.id.clone())
            .collect();
        let has = |kinds: &[ParamType]| {
            q.clauses.iter().any(|c| {
                matches!(c, Clause::Values { param_type, negated: false, .. }
                    if kinds.contains(param_type))
            })
        };
        if has(&[ParamType::Date]) && has(&[ParamType::Reference, ParamType::Token]) {
            dates_beside_narrow += 1;
        }
        let mut q = q;
        q.count = 1000;
        let result = engine.search(&q, None).await.unwrap();
        let got: BTreeSet<String> = result.matches.iter().map(|m| m.id.clone()).collect();
        assert_eq!(
            result.total,
            Some(got.len() as u64)
                .filter(|_| got.len() < 1000)
                .or(result.total)
        );
        if got != expected {
            failures.push(format!(
                "{t}?{query_string}: index {} vs reference {} (only index: {:?}; only reference: {:?})",
                got.len(),
                expected.len(),
                got.difference(&expected).take(3).collect::<Vec<_>>(),
                expected.difference(&got).take(3).collect::<Vec<_>>()
            ));
        }
        if !expected.is_empty() {
            nonempty += 1;
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} queries disagree:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        dates_beside_narrow >= 50,
        "only {dates_beside_narrow} queries paired a date with a reference or token"
    );
    // The generator draws from real values, so most queries must find something.
    assert!(
        nonempty > checked / 2,
        "only {nonempty} of {checked} queries matched anything"
    );
}
