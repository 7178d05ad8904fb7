//! Rewriting Bundle-local references (`urn:uuid:…`, conditional `Type?query`) to the ids the
//! transaction assigned or resolved.

use std::collections::HashMap;

use serde_json::Value;

use crate::fhir::reference::{ReferenceKind, classify};

/// Calls `visit` with every `Reference.reference` string in the resource.
pub fn for_each_reference<'a>(value: &'a Value, visit: &mut impl FnMut(&'a str)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("reference", Value::String(s)) => visit(s),
                    _ => for_each_reference(v, visit),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| for_each_reference(v, visit)),
        _ => {}
    }
}

/// Conditional references (`Practitioner?identifier=…`) used anywhere in the resource.
pub fn conditional_references(resource: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for_each_reference(resource, &mut |r| {
        if matches!(classify(r), ReferenceKind::Conditional { .. }) {
            out.push(r.to_string());
        }
    });
    out
}

/// Replaces every string equal to a key of `map` (references, uri/url elements) and every
/// occurrence inside the narrative (`text.div` links), as the transaction rules require.
/// Returns local references (`urn:…`) left unresolved.
pub fn rewrite(value: &mut Value, map: &HashMap<String, String>) -> Vec<String> {
    let mut unresolved = Vec::new();
    rewrite_inner(value, map, &mut unresolved, false);
    unresolved
}

fn rewrite_inner(
    value: &mut Value,
    map: &HashMap<String, String>,
    unresolved: &mut Vec<String>,
    in_reference: bool,
) {
    match value {
        Value::Object(object) => {
            for (key, v) in object.iter_mut() {
                if key == "div" {
                    if let Value::String(div) = v
                        && div.contains("urn:")
                    {
                        for (from, to) in map.iter().filter(|(k, _)| k.starts_with("urn:")) {
                            if div.contains(from.as_str()) {
                                *div = div.replace(from.as_str(), to);
                            }
                        }
                    }
                    continue;
                }
                rewrite_inner(v, map, unresolved, key == "reference");
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite_inner(v, map, unresolved, false);
            }
        }
        Value::String(s) => {
            if let Some(to) = map.get(s.as_str()) {
                *s = to.clone();
            } else if in_reference && s.starts_with("urn:uuid:") {
                unresolved.push(s.clone());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_references_uris_and_narrative() {
        let mut r = json!({
            "resourceType": "Observation",
            "text": {"status": "generated", "div": "<div><a href=\"urn:uuid:1\">p</a></div>"},
            "subject": {"reference": "urn:uuid:1"},
            "focus": [{"reference": "urn:uuid:2"}],
            "extension": [{"url": "x", "valueUri": "urn:uuid:1"}]
        });
        let map = HashMap::from([("urn:uuid:1".to_string(), "Patient/a".to_string())]);
        let unresolved = rewrite(&mut r, &map);
        assert_eq!(r["subject"]["reference"], "Patient/a");
        assert_eq!(r["extension"][0]["valueUri"], "Patient/a");
        assert!(
            r["text"]["div"]
                .as_str()
                .unwrap()
                .contains("href=\"Patient/a\"")
        );
        assert_eq!(unresolved, vec!["urn:uuid:2".to_string()]);
    }

    #[test]
    fn finds_conditional_references() {
        let r = json!({"performer": [{"reference": "Practitioner?identifier=a|1"}], "subject": {"reference": "Patient/1"}});
        assert_eq!(
            conditional_references(&r),
            vec!["Practitioner?identifier=a|1"]
        );
    }
}
