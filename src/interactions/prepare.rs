//! Checks and stamping of a resource before it is written.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::fhir::instant::format_instant;
use crate::fhir::outcome::{Issue, IssueType};

use super::error::Error;

/// The resource must be a JSON object of the expected type and valid against the R4 definitions.
pub fn check_resource(resource: &Value, expected_type: &str) -> Result<(), Error> {
    let Some(object) = resource.as_object() else {
        return Err(Error::invalid(
            IssueType::Structure,
            "the body must be a JSON object holding a FHIR resource",
        ));
    };
    match object.get("resourceType").and_then(Value::as_str) {
        None => {
            return Err(Error::Invalid(vec![
                Issue::error(IssueType::Required, "resourceType is missing").at(expected_type),
            ]));
        }
        Some(t) if t != expected_type => {
            return Err(Error::Invalid(vec![
                Issue::error(
                    IssueType::Invalid,
                    format!("resourceType is '{t}' but the request is for '{expected_type}'"),
                )
                .at(format!("{t}.resourceType")),
            ]));
        }
        Some(_) => {}
    }
    let issues = crate::validation::validate_resource(resource);
    if issues.iter().any(Issue::is_error) {
        return Err(Error::Invalid(
            issues.into_iter().filter(Issue::is_error).collect(),
        ));
    }
    Ok(())
}

pub fn resource_id(resource: &Value) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta`.
pub fn stamp(resource: &mut Value, id: &str, version_id: i64, last_updated: OffsetDateTime) {
    let object = resource.as_object_mut().expect("checked to be an object");
    object.insert("id".into(), Value::String(id.to_string()));
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = json!({});
    }
    let meta = meta.as_object_mut().expect("meta is an object");
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated)),
    );
}

/// A digest of what a version says, leaving out what `stamp` sets (`id`, `meta.versionId`,
/// `meta.lastUpdated`): two versions with the same digest differ only in their stamp, so an
/// update carrying the current content can be answered with the current version instead of a
/// new one (no new history, change-feed row, Provenance, index work or identity re-link for a
/// trust re-sending what it sent before, as every ADT message re-sends the patient).
/// Object keys are taken in their stored order, so the same content sent with its keys in
/// another order gets another digest and is written as a new version: never the other way.
/// (The reference for `content_and_hash`, which the write path uses.)
#[cfg(test)]
pub fn content_hash(resource: &Value) -> Vec<u8> {
    use sha2::Digest;
    struct Sink<'a>(&'a mut sha2::Sha256);
    impl std::io::Write for Sink<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = sha2::Sha256::new();
    let mut put = |key: &str, value: &Value| {
        // Serialising into a digest cannot fail; keys are escaped JSON strings, so the framing
        // is unambiguous.
        let _ = serde_json::to_writer(Sink(&mut hasher), key);
        hasher.update(b":");
        let _ = serde_json::to_writer(Sink(&mut hasher), value);
        hasher.update(b",");
    };
    for (key, value) in resource.as_object().into_iter().flatten() {
        match (key.as_str(), value) {
            ("id", _) => {}
            ("meta", Value::Object(meta)) => {
                let rest: Map<String, Value> = meta
                    .iter()
                    .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !rest.is_empty() {
                    put(key, &Value::Object(rest));
                }
            }
            _ => put(key, value),
        }
    }
    hasher.finalize().to_vec()
}

/// `(resource.to_string(), content_hash(resource))` from one serialisation: the digest is
/// taken over the serialised text of each top-level member it covers (`"key":value,` is
/// exactly what `content_hash` feeds it), so the resource is serialised once, not twice.
/// Digests already stored on heads stay comparable: the bytes hashed are the same.
pub fn content_and_hash(resource: &Value) -> (String, Vec<u8>) {
    use sha2::Digest;
    let Value::Object(object) = resource else {
        // Never the case for a stored resource (checked to be an object).
        let text = resource.to_string();
        return (text, sha2::Sha256::new().finalize().to_vec());
    };
    let mut hasher = sha2::Sha256::new();
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    out.push(b'{');
    for (n, (key, value)) in object.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let start = out.len();
        // Serialising into memory cannot fail (keys are strings, numbers are finite).
        let _ = serde_json::to_writer(&mut out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
        match (key.as_str(), value) {
            ("id", _) => {}
            ("meta", Value::Object(meta)) => {
                let rest: Map<String, Value> = meta
                    .iter()
                    .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !rest.is_empty() {
                    let mut member = Vec::new();
                    let _ = serde_json::to_writer(&mut member, key);
                    member.push(b':');
                    let _ = serde_json::to_writer(&mut member, &Value::Object(rest));
                    hasher.update(&member);
                    hasher.update(b",");
                }
            }
            _ => {
                hasher.update(&out[start..]);
                hasher.update(b",");
            }
        }
    }
    out.push(b'}');
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    (text, hasher.finalize().to_vec())
}

/// `(system, value)` of the resource's business identifiers (`identifier`, single or repeated).
pub fn identifiers(resource: &Value) -> Vec<(String, String)> {
    let one = |i: &Value| {
        let value = i.get("value")?.as_str()?;
        let system = i.get("system").and_then(Value::as_str).unwrap_or("");
        Some((system.to_string(), value.to_string()))
    };
    match resource.get("identifier") {
        Some(Value::Array(items)) => {
            let mut out: Vec<_> = items.iter().filter_map(one).collect();
            out.sort();
            out.dedup();
            out
        }
        Some(single @ Value::Object(_)) => one(single).into_iter().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_ignores_the_stamp_only() {
        let t = crate::fhir::instant::now_millis();
        let sent = json!({"resourceType": "Patient", "gender": "male"});
        let mut stored = sent.clone();
        stamp(&mut stored, "abc", 3, t);
        assert_eq!(content_hash(&sent), content_hash(&stored));
        let mut restamped = stored.clone();
        stamp(&mut restamped, "abc", 4, t + time::Duration::seconds(5));
        assert_eq!(content_hash(&stored), content_hash(&restamped));

        let mut other = stored.clone();
        other["gender"] = json!("female");
        assert_ne!(content_hash(&stored), content_hash(&other));
        let mut labelled = stored.clone();
        labelled["meta"]["security"] = json!([{"code": "R"}]);
        assert_ne!(content_hash(&stored), content_hash(&labelled));
        // A value moved to another key is another resource, not the same framing.
        assert_ne!(
            content_hash(&json!({"a": "b,c", "d": 1})),
            content_hash(&json!({"a": "b", "c,d": 1}))
        );
    }

    /// The write path's one-pass text and digest are exactly `to_string` and `content_hash`:
    /// digests stored on heads by earlier builds keep matching.
    #[test]
    fn content_and_hash_is_to_string_and_content_hash() {
        let t = crate::fhir::instant::now_millis();
        let mut stamped = json!({
            "resourceType": "Observation",
            "status": "final",
            "meta": {"profile": ["p"], "security": [{"code": "R"}]},
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8", "display": "é \"q\" \\ \u{1}"}]},
            "valueQuantity": {"value": 1.5e-7, "unit": "mg"},
            "component": [{"valueInteger": -3}, {"valueBoolean": true}, {"valueString": null}],
            "extension": [],
            "note": {}
        });
        stamp(&mut stamped, "abc", 3, t);
        let cases = [
            stamped,
            json!({"resourceType": "Patient", "gender": "male"}),
            json!({"resourceType": "Patient", "id": "x", "meta": {"versionId": "1"}}),
            json!({"meta": "not an object", "id": 7}),
            json!({}),
            json!({"a": "b,c", "d": 1}),
        ];
        for r in &cases {
            let (text, hash) = content_and_hash(r);
            assert_eq!(text, r.to_string());
            assert_eq!(hash, content_hash(r), "{r}");
        }
    }

    #[test]
    fn stamping_keeps_other_meta() {
        let mut r = json!({"resourceType": "Patient", "meta": {"profile": ["p"]}});
        let t = crate::fhir::instant::now_millis();
        stamp(&mut r, "abc", 2, t);
        assert_eq!(r["id"], "abc");
        assert_eq!(r["meta"]["versionId"], "2");
        assert_eq!(r["meta"]["profile"][0], "p");
        assert_eq!(r["meta"]["lastUpdated"], format_instant(t));
    }

    #[test]
    fn identifiers_single_and_repeated() {
        let r =
            json!({"identifier": [{"system": "s", "value": "1"}, {"value": "2"}, {"system": "s"}]});
        assert_eq!(
            identifiers(&r),
            vec![("".into(), "2".into()), ("s".into(), "1".into())]
        );
        let b = json!({"identifier": {"system": "s", "value": "b"}});
        assert_eq!(identifiers(&b), vec![("s".into(), "b".into())]);
    }

    #[test]
    fn wrong_resource_type_is_located() {
        let err = check_resource(&json!({"resourceType": "Observation"}), "Patient").unwrap_err();
        let Error::Invalid(issues) = err else {
            panic!()
        };
        assert_eq!(
            issues[0].location.as_deref(),
            Some("Observation.resourceType")
        );
    }
}
