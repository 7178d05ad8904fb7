//! Profile validation: the constraints a profile adds on top of R4, as data.
//!
//! Each profile is a JSON file under `profiles/` (built in) or `governance.profiles_dir`: its
//! canonical URL, the resource type it constrains, and rules taken from the profile's
//! StructureDefinition differential — cardinality of elements and slices, fixed values,
//! patterns, and value-set bindings that can be enumerated. shcr publishes a StructureDefinition
//! generated from the same rules (`/profiles/{id}`), so what it checks and what it publishes
//! cannot drift apart.
//!
//! A rule selects nodes with a small path language: dotted element names from the resource
//! type, where a step may filter repeating elements by a child's value, e.g.
//! `Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value` or
//! `Patient.extension[url=https://…/Extension-UKCore-EthnicCategory]`. `min`/`max` count the
//! matches inside each node of the rule's `context` (the resource when absent), which is how a
//! slice's cardinality is written.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::fhir::outcome::{Issue, IssueType, Severity};

const BUILTIN: &[(&str, &str)] = &[
    (
        "UKCore-Patient",
        include_str!("../../profiles/UKCore-Patient.json"),
    ),
    (
        "UKCore-Observation",
        include_str!("../../profiles/UKCore-Observation.json"),
    ),
    (
        "UKCore-AllergyIntolerance",
        include_str!("../../profiles/UKCore-AllergyIntolerance.json"),
    ),
    (
        "UKCore-Condition",
        include_str!("../../profiles/UKCore-Condition.json"),
    ),
    (
        "UKCore-Immunization",
        include_str!("../../profiles/UKCore-Immunization.json"),
    ),
    (
        "UKCore-Practitioner",
        include_str!("../../profiles/UKCore-Practitioner.json"),
    ),
    (
        "UKCore-Organization",
        include_str!("../../profiles/UKCore-Organization.json"),
    ),
    (
        "ShCR-Patient",
        include_str!("../../profiles/ShCR-Patient.json"),
    ),
    (
        "ShCR-Observation",
        include_str!("../../profiles/ShCR-Observation.json"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Binding {
    /// The code system whose codes are constrained (codings of other systems are judged by
    /// `other_systems`).
    pub system: String,
    pub codes: Vec<String>,
    /// `allowed` (default) lets codings of other systems through; `error` refuses them.
    #[serde(default)]
    pub other_systems: Option<String>,
    /// The value set's canonical, for the published StructureDefinition.
    pub value_set: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Nodes the counts are taken in (the resource when absent).
    #[serde(default)]
    pub context: Option<String>,
    /// Path of the constrained element, relative to `context` (without the type) or from the
    /// resource type when there is no context.
    pub path: String,
    #[serde(default)]
    pub min: Option<usize>,
    #[serde(default)]
    pub max: Option<usize>,
    #[serde(default)]
    pub fixed: Option<Value>,
    /// A regular expression every matched string must match entirely.
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub binding: Option<Binding>,
    /// A named check implemented in code: `nhs-number` (modulus 11).
    #[serde(default)]
    pub check: Option<String>,
    /// `error` (default) or `warning`.
    #[serde(default)]
    pub severity: Option<String>,
    /// Why the rule exists, shown with every issue it raises.
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub url: String,
    pub id: String,
    pub name: String,
    pub title: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub version: String,
    pub publisher: String,
    pub description: String,
    /// The profile this one constrains further (its rules apply too).
    #[serde(default)]
    pub base_definition: Option<String>,
    /// Where the rules were taken from.
    pub source: String,
    pub rules: Vec<Rule>,
}

/// One step of a rule path: an element name and an optional `[child=value]` filter.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    filter: Option<(String, String)>,
}

fn parse_steps(path: &str) -> Vec<Step> {
    // Split on dots outside brackets (filter values are URLs full of dots).
    let mut steps = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for ch in path.chars() {
        match ch {
            '[' => {
                depth += 1;
                current.push(ch);
            }
            ']' => {
                depth -= 1;
                current.push(ch);
            }
            '.' if depth == 0 => steps.push(std::mem::take(&mut current)),
            _ => current.push(ch),
        }
    }
    if !current.is_empty() {
        steps.push(current);
    }
    steps
        .into_iter()
        .map(|s| match s.split_once('[') {
            Some((name, rest)) => {
                let inner = rest.trim_end_matches(']');
                let (k, v) = inner.split_once('=').unwrap_or((inner, ""));
                Step {
                    name: name.to_string(),
                    filter: Some((k.to_string(), v.to_string())),
                }
            }
            None => Step {
                name: s,
                filter: None,
            },
        })
        .collect()
}

/// The nodes a path selects under `node`, with their FHIRPath locations.
fn select<'a>(node: &'a Value, location: &str, steps: &[Step]) -> Vec<(String, &'a Value)> {
    let Some((step, rest)) = steps.split_first() else {
        return vec![(location.to_string(), node)];
    };
    let Some(child) = node.get(&step.name) else {
        return Vec::new();
    };
    let items: Vec<(String, &Value)> = match child {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{location}.{}[{i}]", step.name), v))
            .collect(),
        v => vec![(format!("{location}.{}", step.name), v)],
    };
    items
        .into_iter()
        .filter(|(_, v)| match &step.filter {
            Some((k, want)) => v.get(k).and_then(Value::as_str) == Some(want.as_str()),
            None => true,
        })
        .flat_map(|(loc, v)| select(v, &loc, rest))
        .collect()
}

fn coding(c: &Value) -> Option<(&str, &str)> {
    Some((
        c.get("system").and_then(Value::as_str).unwrap_or(""),
        c.get("code").and_then(Value::as_str)?,
    ))
}

fn codings(value: &Value) -> Vec<(&str, &str)> {
    let one = coding;
    if let Some(list) = value.get("coding").and_then(Value::as_array) {
        list.iter().filter_map(one).collect()
    } else if value.get("code").is_some() {
        one(value).into_iter().collect()
    } else {
        Vec::new()
    }
}

fn nhs_number_ok(s: &str) -> bool {
    crate::identity::nhs_number::NhsNumber::parse(s).is_ok()
}

impl Rule {
    fn severity(&self) -> Severity {
        match self.severity.as_deref() {
            Some("warning") => Severity::Warning,
            _ => Severity::Error,
        }
    }

    fn issue(&self, code: IssueType, location: &str, what: String) -> Issue {
        Issue {
            severity: self.severity(),
            code,
            diagnostics: format!("{what} ({})", self.message),
            location: Some(location.to_string()),
        }
    }

    fn check(&self, profile: &str, resource: &Value, root: &str, issues: &mut Vec<Issue>) {
        let contexts: Vec<(String, &Value)> = match &self.context {
            Some(c) => select(
                resource,
                root,
                &parse_steps(c).into_iter().skip(1).collect::<Vec<_>>(),
            ),
            None => vec![(root.to_string(), resource)],
        };
        let steps = parse_steps(&self.path);
        // A path without context starts with the type name.
        let steps: Vec<Step> = if self.context.is_none() {
            steps.into_iter().skip(1).collect()
        } else {
            steps
        };
        for (ctx_loc, ctx) in contexts {
            let found = select(ctx, &ctx_loc, &steps);
            let relative: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            let at = if relative.is_empty() {
                ctx_loc.clone()
            } else {
                format!("{ctx_loc}.{}", relative.join("."))
            };
            if let Some(min) = self.min
                && found.len() < min
            {
                issues.push(self.issue(
                    IssueType::Required,
                    &at,
                    format!("{profile}: at least {min} expected, found {}", found.len()),
                ));
            }
            if let Some(max) = self.max
                && found.len() > max
            {
                issues.push(self.issue(
                    IssueType::Structure,
                    &found[max].0,
                    format!("{profile}: at most {max} allowed, found {}", found.len()),
                ));
            }
            for (loc, value) in &found {
                if let Some(fixed) = &self.fixed
                    && *value != fixed
                {
                    issues.push(self.issue(
                        IssueType::Value,
                        loc,
                        format!("{profile}: must be {fixed}"),
                    ));
                }
                if let Some(pattern) = &self.pattern {
                    let ok = value
                        .as_str()
                        .is_some_and(|s| compiled(pattern).is_some_and(|re| re.is_match(s)));
                    if !ok {
                        issues.push(self.issue(
                            IssueType::Value,
                            loc,
                            format!("{profile}: does not match {pattern}"),
                        ));
                    }
                }
                if let Some(b) = &self.binding {
                    for (system, code) in codings(value) {
                        let bad = if system == b.system {
                            !b.codes.iter().any(|c| c == code)
                        } else {
                            b.other_systems.as_deref() == Some("error")
                        };
                        if bad {
                            issues.push(self.issue(
                                IssueType::CodeInvalid,
                                loc,
                                format!(
                                    "{profile}: code '{system}|{code}' is not in value set {}",
                                    b.value_set
                                ),
                            ));
                        }
                    }
                }
                if self.check.as_deref() == Some("nhs-number")
                    && !value.as_str().is_some_and(nhs_number_ok)
                {
                    issues.push(self.issue(
                        IssueType::Value,
                        loc,
                        format!(
                            "{profile}: not a valid NHS number (10 digits, modulus 11 check digit)"
                        ),
                    ));
                }
            }
        }
    }
}

fn compiled(pattern: &str) -> Option<&'static Regex> {
    static CACHE: LazyLock<std::sync::Mutex<BTreeMap<String, &'static Regex>>> =
        LazyLock::new(Default::default);
    let mut cache = CACHE.lock().ok()?;
    if let Some(re) = cache.get(pattern) {
        return Some(re);
    }
    let re: &'static Regex = Box::leak(Box::new(Regex::new(&format!("^(?:{pattern})$")).ok()?));
    cache.insert(pattern.to_string(), re);
    Some(re)
}

/// Every profile shcr knows, by canonical URL.
pub struct Profiles {
    by_url: BTreeMap<String, Profile>,
}

impl Profiles {
    /// The built-in profiles plus `*.json` files in `dir`. Rules are checked now (paths,
    /// patterns, base profiles), so a bad file stops start-up instead of a request.
    pub fn load(dir: Option<&std::path::Path>) -> anyhow::Result<Profiles> {
        let mut texts: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
            .collect();
        if let Some(dir) = dir {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("profiles folder {}: {e}", dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for f in files {
                texts.push((f.display().to_string(), std::fs::read_to_string(&f)?));
            }
        }
        let mut by_url = BTreeMap::new();
        for (name, text) in texts {
            let p: Profile =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("profile {name}: {e}"))?;
            if !super::is_resource_type(&p.resource_type) {
                anyhow::bail!(
                    "profile {name}: {} is not an R4 resource type",
                    p.resource_type
                );
            }
            for r in &p.rules {
                if let Some(pattern) = &r.pattern
                    && compiled(pattern).is_none()
                {
                    anyhow::bail!("profile {name}: pattern {pattern} is not a regular expression");
                }
                let head = r.context.as_deref().unwrap_or(&r.path);
                if parse_steps(head).first().map(|s| s.name.as_str())
                    != Some(p.resource_type.as_str())
                {
                    anyhow::bail!(
                        "profile {name}: rule path {head} must start with {}",
                        p.resource_type
                    );
                }
            }
            by_url.insert(p.url.clone(), p);
        }
        for p in by_url.values() {
            if let Some(base) = &p.base_definition
                && !base.starts_with("http://hl7.org/fhir/StructureDefinition/")
                && !by_url.contains_key(base)
            {
                anyhow::bail!("profile {}: base profile {base} is not loaded", p.id);
            }
        }
        Ok(Profiles { by_url })
    }

    pub fn builtin() -> &'static Profiles {
        static BUILT: LazyLock<Profiles> =
            LazyLock::new(|| Profiles::load(None).expect("built-in profiles"));
        &BUILT
    }

    pub fn get(&self, url: &str) -> Option<&Profile> {
        // Canonicals may carry a version (`url|2.0.1`).
        self.by_url.get(url.split('|').next().unwrap_or(url))
    }

    pub fn by_id(&self, id: &str) -> Option<&Profile> {
        self.by_url.values().find(|p| p.id == id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Profile> {
        self.by_url.values()
    }

    pub fn for_type<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a Profile> {
        self.by_url
            .values()
            .filter(move |p| p.resource_type == resource_type)
    }

    /// Checks `resource` against `profile` and every profile it derives from.
    pub fn validate(&self, profile: &Profile, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        let actual = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if actual != profile.resource_type {
            issues.push(
                Issue::error(
                    IssueType::Invalid,
                    format!(
                        "profile {} constrains {}, not {actual}",
                        profile.url, profile.resource_type
                    ),
                )
                .at(format!("{actual}.resourceType")),
            );
            return issues;
        }
        let mut chain = vec![profile];
        let mut next = profile.base_definition.as_deref();
        while let Some(url) = next {
            match self.get(url) {
                Some(p) if !chain.iter().any(|c| c.url == p.url) => {
                    chain.push(p);
                    next = p.base_definition.as_deref();
                }
                _ => break,
            }
        }
        for p in chain.iter().rev() {
            for rule in &p.rules {
                rule.check(&p.name, resource, &p.resource_type, &mut issues);
            }
        }
        issues
    }

    /// The StructureDefinition shcr publishes for a profile: its rules as a differential.
    pub fn structure_definition(&self, p: &Profile) -> Value {
        let elements: Vec<Value> = p
            .rules
            .iter()
            .map(|r| {
                let path = match &r.context {
                    Some(c) => format!("{c}.{}", r.path),
                    None => r.path.clone(),
                };
                let plain: String = parse_steps(&path)
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                let mut e = json!({"id": path, "path": plain, "short": r.message});
                if let Some(min) = r.min {
                    e["min"] = json!(min);
                }
                if let Some(max) = r.max {
                    e["max"] = json!(max.to_string());
                }
                if let Some(f) = &r.fixed {
                    e["fixedString"] = f.clone();
                }
                if let Some(pattern) = &r.pattern {
                    e["constraint"] = json!([{
                        "key": format!("shcr-{}", plain.replace('.', "-").to_lowercase()),
                        "severity": r.severity.as_deref().unwrap_or("error"),
                        "human": r.message,
                        "expression": format!("matches('^(?:{pattern})$')"),
                    }]);
                }
                if let Some(b) = &r.binding {
                    e["binding"] = json!({"strength": "required", "valueSet": b.value_set});
                }
                e
            })
            .collect();
        json!({
            "resourceType": "StructureDefinition",
            "id": p.id,
            "url": p.url,
            "version": p.version,
            "name": p.name.replace('-', ""),
            "title": p.title,
            "status": "active",
            "publisher": p.publisher,
            "description": format!("{} Rules shcr checks (source: {}).", p.description, p.source),
            "fhirVersion": "4.0.1",
            "kind": "resource",
            "abstract": false,
            "type": p.resource_type,
            "baseDefinition": p.base_definition.clone().unwrap_or_else(|| format!("http://hl7.org/fhir/StructureDefinition/{}", p.resource_type)),
            "derivation": "constraint",
            "differential": {"element": elements},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_load_and_chain_to_uk_core() {
        let p = Profiles::load(None).expect("built-in profiles");
        let shcr = p.by_id("ShCR-Patient").expect("ShCR-Patient");
        assert!(p.get(shcr.base_definition.as_deref().unwrap()).is_some());
        assert!(p.for_type("Patient").count() >= 2);
    }

    #[test]
    fn slice_rules_locate_each_offending_element() {
        let p = Profiles::load(None).unwrap();
        let profile = p.by_id("ShCR-Patient").unwrap();
        let patient = json!({"resourceType": "Patient",
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765918"},
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]});
        let issues = p.validate(profile, &patient);
        let at: Vec<_> = issues
            .iter()
            .map(|i| i.location.clone().unwrap_or_default())
            .collect();
        assert!(at.contains(&"Patient.identifier[1]".to_string()), "{at:?}");
        assert!(
            at.contains(&"Patient.identifier[0].value".to_string()),
            "{at:?}"
        );
        assert!(at.contains(&"Patient.name".to_string()), "{at:?}");
    }
}
