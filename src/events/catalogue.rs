//! The event catalogue (`events/catalogue.toml`): event types trusts may send, the resources
//! each carries, and the subscription topics they feed. Data, not code: operators review and
//! change the file; shcr checks it once at start-up and refuses an inconsistent one.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The catalogue shipped with the binary; `events.catalogue` in the configuration overrides it.
pub const BUILT_IN: &str = include_str!("../../events/catalogue.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventClass {
    Clinical,
    Operational,
    Platform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authority {
    Authoritative,
    Advisory,
}

impl Authority {
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Authoritative => "authoritative",
            Authority::Advisory => "advisory",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    pub code: String,
    pub display: String,
    pub class: EventClass,
    pub resources: Vec<String>,
    pub authority: Authority,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub resource: String,
    pub interactions: Vec<String>,
    /// `path = [values]`: every path must hold one of its values.
    #[serde(default, rename = "where")]
    pub conditions: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    pub code: String,
    pub title: String,
    pub description: String,
    #[serde(default, rename = "trigger")]
    pub triggers: Vec<Trigger>,
    /// Canonical URL, `<topic_base>/<code>`; filled in at load.
    #[serde(skip)]
    pub url: String,
    /// Event codes that feed this topic; filled in at load from the events' `topics`.
    #[serde(skip)]
    pub events: BTreeSet<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    event_system: String,
    topic_base: String,
    national_identifier_systems: Vec<String>,
    #[serde(rename = "event")]
    events: Vec<EventType>,
    #[serde(rename = "topic")]
    topics: Vec<Topic>,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    pub event_system: String,
    pub topic_base: String,
    national_systems: BTreeSet<String>,
    events: Vec<EventType>,
    topics: Vec<Topic>,
}

#[derive(Debug, thiserror::Error)]
#[error("event catalogue {source_name}: {message}")]
pub struct CatalogueError {
    source_name: String,
    message: String,
}

impl Catalogue {
    pub fn built_in() -> Catalogue {
        Catalogue::parse(BUILT_IN, "built-in").expect("the built-in catalogue is valid")
    }

    pub fn load(path: Option<&Path>) -> Result<Catalogue, CatalogueError> {
        match path {
            None => Catalogue::parse(BUILT_IN, "built-in"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| CatalogueError {
                    source_name: p.display().to_string(),
                    message: e.to_string(),
                })?;
                Catalogue::parse(&text, &p.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, source_name: &str) -> Result<Catalogue, CatalogueError> {
        let err = |message: String| CatalogueError {
            source_name: source_name.to_string(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut codes = BTreeSet::new();
        let mut topics = file.topics;
        let topic_base = file.topic_base.trim_end_matches('/').to_string();
        let mut topic_codes = BTreeSet::new();
        for topic in &mut topics {
            if !topic_codes.insert(topic.code.clone()) {
                return Err(err(format!("topic '{}' is listed twice", topic.code)));
            }
            topic.url = format!("{topic_base}/{}", topic.code);
            for trigger in &topic.triggers {
                if !crate::validation::is_resource_type(&trigger.resource) {
                    return Err(err(format!(
                        "topic '{}' triggers on '{}', which is not a FHIR R4 resource type",
                        topic.code, trigger.resource
                    )));
                }
                if let Some(bad) = trigger
                    .interactions
                    .iter()
                    .find(|i| !matches!(i.as_str(), "create" | "update" | "delete"))
                {
                    return Err(err(format!(
                        "topic '{}': interaction '{bad}' is not create, update or delete",
                        topic.code
                    )));
                }
            }
        }
        for event in &file.events {
            if !codes.insert(event.code.clone()) {
                return Err(err(format!("event '{}' is listed twice", event.code)));
            }
            // The code is also a NATS subject token: no dots, wildcards or spaces.
            if event.code.is_empty()
                || !event
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(format!(
                    "event code '{}' must be letters, digits, '-' or '_'",
                    event.code
                )));
            }
            for r in &event.resources {
                if !crate::validation::is_resource_type(r) {
                    return Err(err(format!(
                        "event '{}' carries '{r}', which is not a FHIR R4 resource type",
                        event.code
                    )));
                }
            }
            if event.class != EventClass::Platform && event.resources.is_empty() {
                return Err(err(format!(
                    "event '{}' must list the resources it carries",
                    event.code
                )));
            }
            for t in &event.topics {
                let Some(topic) = topics.iter_mut().find(|topic| &topic.code == t) else {
                    return Err(err(format!(
                        "event '{}' feeds topic '{t}', which is not defined",
                        event.code
                    )));
                };
                topic.events.insert(event.code.clone());
            }
        }
        Ok(Catalogue {
            event_system: file.event_system,
            topic_base,
            national_systems: file.national_identifier_systems.into_iter().collect(),
            events: file.events,
            topics,
        })
    }

    pub fn events(&self) -> &[EventType] {
        &self.events
    }

    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    pub fn event(&self, code: &str) -> Option<&EventType> {
        self.events.iter().find(|e| e.code == code)
    }

    /// An event a trust may send (platform events are shcr's own).
    pub fn inbound_event(&self, system: Option<&str>, code: &str) -> Option<&EventType> {
        if system.is_some_and(|s| s != self.event_system) {
            return None;
        }
        self.event(code).filter(|e| e.class != EventClass::Platform)
    }

    pub fn topic_by_url(&self, url: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.url == url)
    }

    pub fn is_national_system(&self, system: &str) -> bool {
        self.national_systems.contains(system)
    }
}

impl Topic {
    /// Whether a change notifies this topic: its event feeds the topic, or a trigger matches
    /// the resource type, the interaction and the new version's content.
    pub fn matches(
        &self,
        event_code: Option<&str>,
        resource_type: &str,
        operation: &str,
        content: Option<&Value>,
    ) -> bool {
        if event_code.is_some_and(|c| self.events.contains(c)) {
            return true;
        }
        self.triggers.iter().any(|t| {
            t.resource == resource_type
                && t.interactions.iter().any(|i| i == operation)
                && t.conditions.iter().all(|(path, values)| match content {
                    Some(content) => path_values(content, path)
                        .iter()
                        .any(|v| values.iter().any(|want| want == v)),
                    // A deletion has no content to test: only unconditional triggers fire.
                    None => false,
                })
        })
    }

    /// Whether any trigger needs the resource content to decide.
    pub fn needs_content(&self, resource_type: &str) -> bool {
        self.triggers
            .iter()
            .any(|t| t.resource == resource_type && !t.conditions.is_empty())
    }
}

/// String values at a dotted path, walking into arrays (`class.code`, `identifier.system`).
pub fn path_values<'a>(value: &'a Value, path: &str) -> Vec<&'a str> {
    let mut current: Vec<&Value> = vec![value];
    for step in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v.get(step) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(other) => next.push(other),
                None => {}
            }
        }
        current = next
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .collect();
    }
    current.into_iter().filter_map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_built_in_catalogue_is_consistent() {
        let c = Catalogue::built_in();
        let admitted = c
            .topic_by_url(&format!("{}/admitted", c.topic_base))
            .unwrap();
        assert!(admitted.events.contains("encounter-admitted-1"));
        assert!(c.inbound_event(None, "encounter-admitted-1").is_some());
        assert!(
            c.inbound_event(None, "dead-letter-1").is_none(),
            "platform events are ours"
        );
        assert!(
            c.inbound_event(Some("http://other"), "encounter-admitted-1")
                .is_none()
        );
        assert!(c.is_national_system("https://fhir.nhs.uk/Id/nhs-number"));
    }

    #[test]
    fn triggers_match_on_type_interaction_and_conditions() {
        let c = Catalogue::built_in();
        let admitted = c
            .topic_by_url(&format!("{}/admitted", c.topic_base))
            .unwrap();
        let inpatient = json!({"status": "in-progress", "class": {"code": "IMP"}});
        let outpatient = json!({"status": "in-progress", "class": {"code": "AMB"}});
        assert!(admitted.matches(None, "Encounter", "create", Some(&inpatient)));
        assert!(!admitted.matches(None, "Encounter", "create", Some(&outpatient)));
        assert!(!admitted.matches(None, "Encounter", "delete", None));
        assert!(admitted.matches(Some("encounter-admitted-1"), "Patient", "update", None));
    }

    #[test]
    fn inconsistent_catalogues_are_refused() {
        let text = BUILT_IN.replace("topics = [\"admitted\"]", "topics = [\"nowhere\"]");
        let e = Catalogue::parse(&text, "t").unwrap_err().to_string();
        assert!(e.contains("nowhere"), "{e}");
        let text = BUILT_IN.replace("resources = [\"Encounter\"]", "resources = [\"Encountre\"]");
        assert!(Catalogue::parse(&text, "t").is_err());
    }

    #[test]
    fn paths_walk_into_arrays() {
        let v = json!({"identifier": [{"system": "a"}, {"system": "b"}]});
        assert_eq!(path_values(&v, "identifier.system"), vec!["a", "b"]);
    }
}
