//! `fhir_comments`: how DSTU2-era XML→JSON converters carried XML comments. R4 JSON has no such
//! property, but documents converted that way are common (the published UK Core examples carry
//! them). They hold no clinical content, so ingest drops them instead of refusing the resource.

use serde_json::Value;

/// Removes every `fhir_comments` property; returns how many were removed. Elements that held
/// nothing but comments (`"_birthDate": {"fhir_comments": [...]}`) go too, since an empty
/// element is itself invalid.
pub fn strip_comments(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let mut removed = usize::from(map.shift_remove("fhir_comments").is_some());
            let mut emptied = Vec::new();
            for (key, v) in map.iter_mut() {
                let n = strip_comments(v);
                if n > 0 && is_empty(v) {
                    emptied.push(key.clone());
                }
                removed += n;
            }
            for key in emptied {
                map.shift_remove(&key);
            }
            removed
        }
        Value::Array(items) => {
            let mut removed = 0;
            for item in items.iter_mut() {
                let n = strip_comments(item);
                if n > 0 && is_empty(item) {
                    // Keeps positions aligned with the primitive array this may accompany.
                    *item = Value::Null;
                }
                removed += n;
            }
            removed
        }
        _ => 0,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.iter().all(Value::is_null),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comments_are_removed_at_any_depth() {
        let mut v = json!({
            "resourceType": "Patient",
            "fhir_comments": ["top"],
            "name": [{"fhir_comments": ["n"], "family": "Smith"}],
            "_birthDate": {"fhir_comments": ["b"]}
        });
        assert_eq!(strip_comments(&mut v), 3);
        assert_eq!(
            v,
            json!({"resourceType": "Patient", "name": [{"family": "Smith"}]})
        );
        let mut aligned =
            json!({"given": ["A", "B"], "_given": [{"fhir_comments": ["x"]}, {"id": "g2"}]});
        strip_comments(&mut aligned);
        assert_eq!(aligned["_given"], json!([null, {"id": "g2"}]));
    }
}
