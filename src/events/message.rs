//! Reading an inbound FHIR message Bundle: the MessageHeader (event, sender, source, focus),
//! the message id, the source's timestamp and each resource's upsert key.

use serde_json::Value;
use time::OffsetDateTime;

use crate::access::OdsCode;
use crate::fhir::outcome::{Issue, IssueType};

use super::catalogue::{Catalogue, EventType};
use super::error::MessageError;

pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// What the response message needs even when the request cannot be processed.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    /// `MessageHeader.id` of the request (the response's `response.identifier`).
    pub header_id: String,
    pub event_coding: Value,
    pub source_endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MessageEntry {
    /// Index in `Bundle.entry` (for error locations).
    pub index: usize,
    pub full_url: Option<String>,
    pub resource_type: String,
    /// The resource as it will be stored: the sender's `id` and version metadata removed.
    /// `Ingest::prepare` moves it into the entry's write request (`Null` after that).
    pub resource: Value,
    /// `(system, value)` of the sender's own identifier: the upsert key.
    pub key: (String, String),
    pub focus: bool,
}

#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// `Bundle.identifier.value`, else `Bundle.id`: unique per sender.
    pub message_id: String,
    pub header: HeaderInfo,
    pub event: EventType,
    pub sender: OdsCode,
    /// `Bundle.timestamp`: when the source produced the event. Orders events per resource.
    pub timestamp: OffsetDateTime,
    pub entries: Vec<MessageEntry>,
}

fn invalid(code: IssueType, location: &str, message: impl Into<String>) -> MessageError {
    MessageError::permanent(
        "invalid",
        400,
        vec![Issue::error(code, message).at(location)],
    )
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The header facts, read leniently so a fatal-error response can still name the request.
pub fn header_info(bundle: &Value) -> Option<HeaderInfo> {
    let header = bundle.get("entry")?.get(0)?.get("resource")?;
    if str_at(header, "resourceType") != Some("MessageHeader") {
        return None;
    }
    Some(HeaderInfo {
        header_id: str_at(header, "id")?.to_string(),
        event_coding: header.get("eventCoding").cloned().unwrap_or(Value::Null),
        source_endpoint: header
            .get("source")
            .and_then(|s| str_at(s, "endpoint"))
            .map(str::to_string),
    })
}

/// The message id a Bundle claims, if any (for dead letters of messages that fail to parse).
pub fn message_id(bundle: &Value) -> Option<String> {
    bundle
        .get("identifier")
        .and_then(|i| str_at(i, "value"))
        .or_else(|| str_at(bundle, "id"))
        .map(str::to_string)
}

/// Reads a message Bundle. The entries' resources are moved out of `bundle` into the message
/// (copying every resource was a measurable share of the consumer's CPU); the Bundle keeps its
/// MessageHeader, which is all `ingest::error_response` reads.
pub fn parse(bundle: &mut Value, catalogue: &Catalogue) -> Result<InboundMessage, MessageError> {
    if str_at(bundle, "resourceType") != Some("Bundle") {
        return Err(invalid(
            IssueType::Invalid,
            "Bundle.resourceType",
            "$process-message takes a Bundle of type message",
        ));
    }
    if str_at(bundle, "type") != Some("message") {
        return Err(invalid(
            IssueType::Invalid,
            "Bundle.type",
            format!(
                "Bundle.type must be message, got {}",
                str_at(bundle, "type").unwrap_or("nothing")
            ),
        ));
    }
    let message_id = message_id(bundle).ok_or_else(|| {
        invalid(
            IssueType::Required,
            "Bundle.identifier",
            "a message needs an id (Bundle.identifier.value or Bundle.id) so repeats are recognised",
        )
    })?;
    if message_id.len() > 200 {
        return Err(invalid(
            IssueType::TooLong,
            "Bundle.identifier",
            "the message id is longer than 200 characters",
        ));
    }
    let timestamp = str_at(bundle, "timestamp")
        .and_then(crate::fhir::instant::parse_instant)
        .ok_or_else(|| {
            invalid(
                IssueType::Required,
                "Bundle.timestamp",
                "a message needs Bundle.timestamp (an instant): it orders events for the same resource",
            )
        })?;
    let entries = match bundle.get("entry") {
        Some(Value::Array(e)) if !e.is_empty() => e,
        _ => {
            return Err(invalid(
                IssueType::Required,
                "Bundle.entry",
                "a message needs entries, the first a MessageHeader",
            ));
        }
    };
    let header = entries[0].get("resource").cloned().unwrap_or(Value::Null);
    if str_at(&header, "resourceType") != Some("MessageHeader") {
        return Err(invalid(
            IssueType::Structure,
            "Bundle.entry[0].resource",
            "the first entry of a message must be its MessageHeader",
        ));
    }
    let issues: Vec<Issue> = crate::validation::validate_resource(&header)
        .into_iter()
        .filter(Issue::is_error)
        .map(|mut i| {
            i.location = Some(match i.location.take() {
                Some(l) => l.replacen("MessageHeader", "Bundle.entry[0].resource", 1),
                None => "Bundle.entry[0].resource".into(),
            });
            i
        })
        .collect();
    if !issues.is_empty() {
        return Err(MessageError::permanent("invalid", 400, issues));
    }
    let header_id = str_at(&header, "id").ok_or_else(|| {
        invalid(
            IssueType::Required,
            "Bundle.entry[0].resource.id",
            "the MessageHeader needs an id: the response message refers to it",
        )
    })?;
    let coding = header.get("eventCoding").ok_or_else(|| {
        invalid(
            IssueType::Required,
            "Bundle.entry[0].resource.eventCoding",
            "the MessageHeader needs eventCoding (events by URI are not supported)",
        )
    })?;
    let code = str_at(coding, "code").unwrap_or("");
    let event = catalogue
        .inbound_event(str_at(coding, "system"), code)
        .ok_or_else(|| {
            MessageError::permanent(
                "unknown-event",
                400,
                vec![
                    Issue::error(
                        IssueType::CodeInvalid,
                        format!(
                            "event '{code}' is not in the event catalogue (system {})",
                            catalogue.event_system
                        ),
                    )
                    .at("Bundle.entry[0].resource.eventCoding"),
                ],
            )
        })?
        .clone();
    let sender = header
        .get("sender")
        .and_then(|s| s.get("identifier"))
        .filter(|i| str_at(i, "system") == Some(ODS_SYSTEM))
        .and_then(|i| str_at(i, "value"))
        .and_then(OdsCode::parse)
        .ok_or_else(|| {
            invalid(
                IssueType::Required,
                "Bundle.entry[0].resource.sender",
                format!("the MessageHeader needs sender.identifier with system {ODS_SYSTEM} and the sending trust's ODS code"),
            )
        })?;
    let focus: Vec<&str> = match header.get("focus") {
        Some(Value::Array(f)) => f.iter().filter_map(|r| str_at(r, "reference")).collect(),
        _ => Vec::new(),
    };
    if focus.is_empty() {
        return Err(invalid(
            IssueType::Required,
            "Bundle.entry[0].resource.focus",
            "the MessageHeader needs focus: the resources the event is about",
        ));
    }

    let entries = bundle["entry"]
        .as_array_mut()
        .expect("checked above: an array of entries");
    let mut parsed = Vec::with_capacity(entries.len() - 1);
    for (index, entry) in entries.iter_mut().enumerate().skip(1) {
        let at = format!("Bundle.entry[{index}]");
        let mut resource = entry.get_mut("resource").map(Value::take).ok_or_else(|| {
            invalid(
                IssueType::Required,
                &at,
                "every entry of a message carries a resource",
            )
        })?;
        let resource_type = str_at(&resource, "resourceType").unwrap_or("").to_string();
        if matches!(resource_type.as_str(), "MessageHeader" | "Bundle" | "") {
            return Err(invalid(
                IssueType::Invalid,
                &format!("{at}.resource"),
                "a message carries one MessageHeader (first) and no nested Bundles",
            ));
        }
        let key = upsert_key(&resource, catalogue).ok_or_else(|| {
            invalid(
                IssueType::Required,
                &format!("{at}.resource.identifier"),
                format!(
                    "{resource_type} needs an identifier in the sender's own system (not a national one such as the NHS number): repeats of the event are matched on it"
                ),
            )
        })?;
        if let Some(object) = resource.as_object_mut() {
            // The sender's ids and versions mean nothing here: identity is the business identifier.
            object.remove("id");
            if let Some(Value::Object(meta)) = object.get_mut("meta") {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
        }
        let full_url = str_at(entry, "fullUrl").map(str::to_string);
        let is_focus = full_url.as_deref().is_some_and(|u| focus.contains(&u));
        if is_focus && !event.resources.contains(&resource_type) {
            return Err(invalid(
                IssueType::BusinessRule,
                &format!("{at}.resource"),
                format!(
                    "event '{}' carries {} as focus, not {resource_type}",
                    event.code,
                    event.resources.join(", ")
                ),
            ));
        }
        parsed.push(MessageEntry {
            index,
            full_url,
            resource_type,
            resource,
            key,
            focus: is_focus,
        });
    }
    for f in &focus {
        if !parsed.iter().any(|e| e.full_url.as_deref() == Some(f)) {
            return Err(invalid(
                IssueType::NotFound,
                "Bundle.entry[0].resource.focus",
                format!("focus '{f}' is not the fullUrl of an entry in the message"),
            ));
        }
    }
    Ok(InboundMessage {
        message_id,
        header: HeaderInfo {
            header_id: header_id.to_string(),
            event_coding: coding.clone(),
            source_endpoint: header
                .get("source")
                .and_then(|s| str_at(s, "endpoint"))
                .map(str::to_string),
        },
        event,
        sender,
        timestamp,
        entries: parsed,
    })
}

/// The first identifier in a system that is not national: the sender's own record number.
fn upsert_key(resource: &Value, catalogue: &Catalogue) -> Option<(String, String)> {
    let one = |i: &Value| {
        let system = str_at(i, "system")?;
        let value = str_at(i, "value")?;
        (!catalogue.is_national_system(system)).then(|| (system.to_string(), value.to_string()))
    };
    match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().find_map(one),
        Some(single @ Value::Object(_)) => one(single),
        _ => None,
    }
}

/// `identifier=system|value` with the separators the criteria parser understands escaped.
pub fn identifier_criteria(system: &str, value: &str) -> String {
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('|', "\\|")
    };
    let token = format!("{}|{}", escape(system), escape(value));
    serde_urlencoded::to_string([("identifier", token)]).expect("encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> Value {
        json!({
            "resourceType": "Bundle", "id": "m1", "type": "message",
            "timestamp": "2026-11-25T10:00:00Z",
            "entry": [
                {"fullUrl": "urn:uuid:h", "resource": {
                    "resourceType": "MessageHeader", "id": "h1",
                    "eventCoding": {"system": "https://fhir.shcr.example.nhs.uk/CodeSystem/event-type", "code": "encounter-admitted-1"},
                    "sender": {"identifier": {"system": ODS_SYSTEM, "value": "RX1"}},
                    "source": {"endpoint": "urn:nhs:addressing:asid:1"},
                    "focus": [{"reference": "urn:uuid:e"}]}},
                {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "src-1",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
                                   {"system": "https://rx1/Id/mrn", "value": "M1"}]}},
                {"fullUrl": "urn:uuid:e", "resource": {"resourceType": "Encounter",
                    "identifier": [{"system": "https://rx1/Id/enc", "value": "E1"}],
                    "status": "in-progress", "class": {"code": "IMP"},
                    "subject": {"reference": "urn:uuid:p"}}}
            ]
        })
    }

    #[test]
    fn a_message_parses_with_local_keys_and_focus() {
        let m = parse(&mut message(), &Catalogue::built_in()).unwrap();
        assert_eq!(m.message_id, "m1");
        assert_eq!(m.sender.as_str(), "RX1");
        assert_eq!(m.entries[0].key, ("https://rx1/Id/mrn".into(), "M1".into()));
        assert!(m.entries[0].resource.get("id").is_none());
        assert!(m.entries[1].focus && !m.entries[0].focus);
    }

    #[test]
    fn unknown_events_and_missing_keys_are_permanent() {
        let mut b = message();
        b["entry"][0]["resource"]["eventCoding"]["code"] = json!("nope-1");
        let e = parse(&mut b, &Catalogue::built_in()).unwrap_err();
        assert_eq!(e.reason_code, "unknown-event");
        assert!(!e.transient);
        let mut b = message();
        b["entry"][1]["resource"]["identifier"] =
            json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]);
        let e = parse(&mut b, &Catalogue::built_in()).unwrap_err();
        assert_eq!(
            e.issues[0].location.as_deref(),
            Some("Bundle.entry[1].resource.identifier")
        );
    }

    #[test]
    fn criteria_escape_separators() {
        assert_eq!(
            identifier_criteria("https://x/Id/a", "1|2"),
            "identifier=https%3A%2F%2Fx%2FId%2Fa%7C1%5C%7C2"
        );
    }
}
