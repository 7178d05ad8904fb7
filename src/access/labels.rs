//! Security labels: the data-driven sensitivity mapping applied at ingest, and reading the labels
//! a stored resource carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use serde_json::{Value, json};

pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// Confidentiality codes from least to most restricted.
const CONFIDENTIALITY_ORDER: [&str; 6] = ["U", "L", "M", "N", "R", "V"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SensitivityFile {
    snomed_system: String,
    icd10_systems: Vec<String>,
    labels: BTreeMap<String, LabelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelFile {
    display: String,
    confidentiality: Option<String>,
    #[serde(default)]
    snomed: Vec<String>,
    #[serde(default)]
    icd10: Vec<String>,
}

#[derive(Debug, Clone)]
struct Label {
    code: String,
    display: String,
    confidentiality: Option<String>,
}

/// Codes (SNOMED exact, ICD-10 prefixes) to sensitivity labels.
#[derive(Debug)]
pub struct Sensitivity {
    snomed_system: String,
    icd10_systems: Vec<String>,
    snomed: HashMap<String, Vec<usize>>,
    icd10: Vec<(String, usize)>,
    labels: Vec<Label>,
}

impl Sensitivity {
    /// Parses and checks `sensitivity.toml`.
    pub fn parse(text: &str) -> Result<Sensitivity, String> {
        let file: SensitivityFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut out = Sensitivity {
            snomed_system: file.snomed_system,
            icd10_systems: file.icd10_systems,
            snomed: HashMap::new(),
            icd10: Vec::new(),
            labels: Vec::new(),
        };
        for (code, label) in file.labels {
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "label '{code}' must be an upper-case v3-ActCode such as HIV or PSY"
                ));
            }
            if let Some(c) = &label.confidentiality
                && !CONFIDENTIALITY_ORDER.contains(&c.as_str())
            {
                return Err(format!(
                    "label {code}: confidentiality '{c}' is not one of U, L, M, N, R, V"
                ));
            }
            if label.snomed.is_empty() && label.icd10.is_empty() {
                return Err(format!("label {code} maps no codes"));
            }
            let index = out.labels.len();
            for s in &label.snomed {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("label {code}: SNOMED code '{s}' is not numeric"));
                }
                out.snomed.entry(s.clone()).or_default().push(index);
            }
            for i in &label.icd10 {
                if i.is_empty() || !i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                    return Err(format!("label {code}: ICD-10 code '{i}' is malformed"));
                }
                out.icd10.push((i.to_ascii_uppercase(), index));
            }
            out.labels.push(Label {
                code,
                display: label.display,
                confidentiality: label.confidentiality,
            });
        }
        Ok(out)
    }

    /// The mapping shipped in `consent-policies/`, for doors without a running server (import).
    pub fn builtin() -> Arc<Sensitivity> {
        static BUILTIN: std::sync::LazyLock<Arc<Sensitivity>> = std::sync::LazyLock::new(|| {
            Arc::new(
                Sensitivity::parse(super::policy::BUILTIN_SENSITIVITY)
                    .expect("built-in sensitivity.toml is valid"),
            )
        });
        BUILTIN.clone()
    }

    /// Sensitivity label codes this mapping can assign.
    pub fn label_codes(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|l| l.code.as_str())
    }

    fn labels_for(&self, system: &str, code: &str) -> Vec<usize> {
        if system == self.snomed_system {
            return self.snomed.get(code).cloned().unwrap_or_default();
        }
        if self.icd10_systems.iter().any(|s| s == system) {
            let code = code.to_ascii_uppercase();
            return self
                .icd10
                .iter()
                .filter(|(prefix, _)| code.starts_with(prefix.as_str()))
                .map(|(_, i)| *i)
                .collect();
        }
        Vec::new()
    }

    /// Adds the sensitivity labels (and their confidentiality) the resource's codings call for
    /// to `meta.security`; labels already there (sent by the trust) stay.
    pub fn apply(&self, resource: &mut Value) {
        let mut found = BTreeSet::new();
        if let Some(object) = resource.as_object() {
            for (key, value) in object {
                // Labels are not clinical codes; never derive labels from labels.
                if key != "meta" {
                    self.scan(value, &mut found);
                }
            }
        }
        if found.is_empty() {
            return;
        }
        let Some(object) = resource.as_object_mut() else {
            return;
        };
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let security = meta
            .as_object_mut()
            .expect("meta is an object")
            .entry("security")
            .or_insert_with(|| json!([]));
        if !security.is_array() {
            *security = json!([]);
        }
        let list = security.as_array_mut().expect("security is an array");
        let has = |list: &Vec<Value>, system: &str, code: &str| {
            list.iter()
                .any(|l| l["system"].as_str() == Some(system) && l["code"].as_str() == Some(code))
        };
        let mut strongest: Option<usize> = list
            .iter()
            .filter(|l| l["system"].as_str() == Some(CONFIDENTIALITY))
            .filter_map(|l| {
                CONFIDENTIALITY_ORDER
                    .iter()
                    .position(|c| Some(*c) == l["code"].as_str())
            })
            .max();
        let had_confidentiality = strongest;
        for i in found {
            let label = &self.labels[i];
            if !has(list, ACT_CODE, &label.code) {
                list.push(
                    json!({"system": ACT_CODE, "code": label.code, "display": label.display}),
                );
            }
            if let Some(c) = &label.confidentiality {
                let rank = CONFIDENTIALITY_ORDER.iter().position(|x| x == c);
                strongest = strongest.max(rank);
            }
        }
        // One confidentiality code: raise it when the mapping asks for more than was sent.
        if strongest > had_confidentiality
            && let Some(rank) = strongest
        {
            list.retain(|l| l["system"].as_str() != Some(CONFIDENTIALITY));
            list.push(json!({"system": CONFIDENTIALITY, "code": CONFIDENTIALITY_ORDER[rank]}));
        }
    }

    fn scan(&self, value: &Value, found: &mut BTreeSet<usize>) {
        match value {
            Value::Object(map) => {
                if let (Some(Value::String(system)), Some(Value::String(code))) =
                    (map.get("system"), map.get("code"))
                {
                    found.extend(self.labels_for(system, code));
                }
                for v in map.values() {
                    self.scan(v, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.scan(v, found)),
            _ => {}
        }
    }
}

/// The security label codes a resource carries (`meta.security[].code`).
pub fn security_codes(resource: &Value) -> Vec<String> {
    resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.get("code").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The current sensitivity mapping, shared by every write door and swapped on policy reload.
#[derive(Debug)]
pub struct LabelCell(RwLock<Arc<Sensitivity>>);

impl LabelCell {
    pub fn new(s: Arc<Sensitivity>) -> Arc<LabelCell> {
        Arc::new(LabelCell(RwLock::new(s)))
    }

    pub fn builtin() -> Arc<LabelCell> {
        Self::new(Sensitivity::builtin())
    }

    pub fn get(&self) -> Arc<Sensitivity> {
        self.0.read().expect("label cell").clone()
    }

    pub fn set(&self, s: Arc<Sensitivity>) {
        *self.0.write().expect("label cell") = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(system: &str, code: &str) -> Value {
        json!({"resourceType": "Condition", "code": {"coding": [{"system": system, "code": code}]}})
    }

    #[test]
    fn hiv_condition_gets_hiv_and_restricted() {
        let s = Sensitivity::builtin();
        let mut c = condition("http://snomed.info/sct", "86406008");
        s.apply(&mut c);
        let codes = security_codes(&c);
        assert!(codes.contains(&"HIV".to_string()), "{c}");
        assert!(codes.contains(&"R".to_string()), "{c}");
    }

    #[test]
    fn icd10_matches_by_prefix_and_trust_labels_stay() {
        let s = Sensitivity::builtin();
        let mut c = condition("http://hl7.org/fhir/sid/icd-10", "F32.1");
        c["meta"] = json!({"security": [{"system": CONFIDENTIALITY, "code": "V"}, {"system": "urn:local", "code": "X"}]});
        s.apply(&mut c);
        let codes = security_codes(&c);
        assert_eq!(
            codes,
            vec!["V", "X", "PSY"],
            "V outranks the mapping's R: {c}"
        );
    }

    #[test]
    fn ordinary_codes_get_no_labels() {
        let s = Sensitivity::builtin();
        let mut c = condition("http://snomed.info/sct", "38341003");
        s.apply(&mut c);
        assert!(c.get("meta").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let e = Sensitivity::parse(
            "snomed_system='x'\nicd10_systems=[]\n[labels.hiv]\ndisplay='x'\nsnomed=['1']",
        )
        .unwrap_err();
        assert!(e.contains("upper-case"), "{e}");
        let e = Sensitivity::parse(
            "snomed_system='x'\nicd10_systems=[]\n[labels.HIV]\ndisplay='x'\nsnomed=['abc']",
        )
        .unwrap_err();
        assert!(e.contains("not numeric"), "{e}");
    }
}
