//! Provenance of every accepted write: in the transaction that writes resource versions, one
//! `Provenance` per activity (create, update, delete) names the exact versions written (target),
//! the contributing trust by ODS code and the sending system or user (agent), the request or
//! message it came in (entity) and when (recorded). Provenance and AuditEvent are not given
//! Provenance of their own: that would never end.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::fhir::id::new_id;
use crate::fhir::instant::format_instant;
use crate::store::{Author, NewVersion, Operation};

pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// Client ids of trust systems and user ids, as shcr's tokens name them.
pub const CLIENT_SYSTEM: &str = "https://fhir.shcr.example.nhs.uk/Id/client-id";
pub const USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
/// `X-Request-ID` (or message id) of the request that carried the write.
pub const REQUEST_SYSTEM: &str = "https://fhir.shcr.example.nhs.uk/Id/request-id";
const DATA_OPERATION: &str = "http://terminology.hl7.org/CodeSystem/v3-DataOperation";
const PARTICIPANT: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// Types whose writes get no Provenance.
pub fn exempt(resource_type: &str) -> bool {
    matches!(resource_type, "Provenance" | "AuditEvent")
}

/// The Provenance versions for `versions` written by `author` (at most one per activity).
/// `reason` is a free-text why, for decisions taken by people (merge, unmerge).
pub fn for_write(
    versions: &[NewVersion],
    author: &Author,
    now: OffsetDateTime,
    reason: Option<&str>,
) -> Vec<NewVersion> {
    let mut out = Vec::new();
    // The same for every activity; serialised once.
    let mut agent: Option<Box<RawValue>> = None;
    for op in [Operation::Create, Operation::Update, Operation::Delete] {
        let targets: Vec<Reference> = versions
            .iter()
            .filter(|v| v.operation == op && !exempt(&v.resource_type))
            .map(|v| Reference {
                reference: format!("{}/{}/_history/{}", v.resource_type, v.id, v.version_id),
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let agent = match &agent {
            Some(a) => a,
            None => agent.insert(
                serde_json::value::to_raw_value(&agents(author)).expect("agents serialise"),
            ),
        };
        let id = new_id();
        let recorded = format_instant(now);
        let code = op.as_str().to_ascii_uppercase();
        // Written straight to text (no `Value` built and serialised), members in the order
        // the resource always had.
        let resource = Document {
            resource_type: "Provenance",
            id: &id,
            meta: Meta {
                version_id: "1",
                last_updated: &recorded,
            },
            target: targets,
            recorded: &recorded,
            activity: Activity {
                coding: [Coding {
                    system: DATA_OPERATION,
                    code: &code,
                }],
            },
            agent,
            entity: author.request_id.as_deref().map(|request| {
                [Entity {
                    role: "source",
                    what: What {
                        identifier: Identifier {
                            system: REQUEST_SYSTEM,
                            value: request,
                        },
                    },
                }]
            }),
            reason: reason.map(|text| [Text { text }]),
        };
        let content = serde_json::to_string(&resource).expect("a Provenance serialises");
        out.push(NewVersion {
            resource_type: "Provenance".into(),
            id,
            version_id: 1,
            last_updated: now,
            operation: Operation::Create,
            method: "POST",
            content: Some(content.into()),
            identifiers: Vec::new(),
            compartment: None,
            content_hash: None,
        });
    }
    out
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: &'a str,
    meta: Meta<'a>,
    target: Vec<Reference>,
    recorded: &'a str,
    activity: Activity<'a>,
    agent: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<[Entity<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<[Text<'a>; 1]>,
}

#[derive(Serialize)]
struct Meta<'a> {
    #[serde(rename = "versionId")]
    version_id: &'static str,
    #[serde(rename = "lastUpdated")]
    last_updated: &'a str,
}

#[derive(Serialize)]
struct Reference {
    reference: String,
}

#[derive(Serialize)]
struct Activity<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Coding<'a> {
    system: &'static str,
    code: &'a str,
}

#[derive(Serialize)]
struct Entity<'a> {
    role: &'static str,
    what: What<'a>,
}

#[derive(Serialize)]
struct What<'a> {
    identifier: Identifier<'a>,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'static str,
    value: &'a str,
}

#[derive(Serialize)]
struct Text<'a> {
    text: &'a str,
}

/// The organisation as author, the system or user as performer acting on its behalf.
fn agents(author: &Author) -> Value {
    let org = author
        .org
        .as_ref()
        .map(|o| json!({"identifier": {"system": ODS_SYSTEM, "value": o}}));
    let who_system = if author.kind == "user" {
        USER_SYSTEM
    } else {
        CLIENT_SYSTEM
    };
    let mut performer = json!({
        "type": {"coding": [{"system": PARTICIPANT, "code": "performer"}]},
        "who": {"identifier": {"system": who_system, "value": author.id}, "display": author.id},
    });
    let mut agents = Vec::new();
    if let Some(org) = org {
        performer["onBehalfOf"] = org.clone();
        agents.push(json!({
            "type": {"coding": [{"system": PARTICIPANT, "code": "author"}]},
            "who": org,
        }));
    }
    agents.push(performer);
    Value::Array(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(t: &str, op: Operation) -> NewVersion {
        NewVersion {
            resource_type: t.into(),
            id: "x".into(),
            version_id: 2,
            last_updated: crate::fhir::instant::now_millis(),
            operation: op,
            method: "PUT",
            content: None,
            identifiers: Vec::new(),
            compartment: None,
            content_hash: None,
        }
    }

    /// The resource as it was built before it was written straight to text.
    fn as_before(
        id: &str,
        op: Operation,
        targets: Vec<Value>,
        author: &Author,
        now: OffsetDateTime,
        reason: Option<&str>,
    ) -> String {
        let mut resource = json!({
            "resourceType": "Provenance",
            "id": id,
            "meta": {"versionId": "1", "lastUpdated": format_instant(now)},
            "target": targets,
            "recorded": format_instant(now),
            "activity": {"coding": [{
                "system": DATA_OPERATION,
                "code": op.as_str().to_ascii_uppercase(),
            }]},
            "agent": agents(author),
        });
        if let Some(request) = &author.request_id {
            resource["entity"] = json!([{
                "role": "source",
                "what": {"identifier": {"system": REQUEST_SYSTEM, "value": request}},
            }]);
        }
        if let Some(reason) = reason {
            resource["reason"] = json!([{"text": reason}]);
        }
        resource.to_string()
    }

    #[test]
    fn provenance_text_is_as_before() {
        let now = crate::fhir::instant::now_millis();
        for (author, reason) in [
            (
                Author {
                    kind: "system",
                    id: "rx1-\"pas\"".into(),
                    org: Some("RX1".into()),
                    request_id: Some("req-1".into()),
                },
                None,
            ),
            (
                Author {
                    kind: "user",
                    id: "u1".into(),
                    org: None,
                    request_id: None,
                },
                Some("merge: same person \u{e9}"),
            ),
        ] {
            let out = for_write(
                &[
                    version("Patient", Operation::Update),
                    version("Encounter", Operation::Create),
                    version("Observation", Operation::Delete),
                ],
                &author,
                now,
                reason,
            );
            assert_eq!(out.len(), 3);
            for (v, (op, target)) in out.iter().zip([
                (Operation::Create, "Encounter/x/_history/2"),
                (Operation::Update, "Patient/x/_history/2"),
                (Operation::Delete, "Observation/x/_history/2"),
            ]) {
                let expected = as_before(
                    &v.id,
                    op,
                    vec![json!({"reference": target})],
                    &author,
                    now,
                    reason,
                );
                assert_eq!(v.content.as_deref(), Some(expected.as_str()));
            }
        }
    }

    #[test]
    fn one_provenance_per_activity_naming_exact_versions() {
        let author = Author {
            kind: "system",
            id: "rx1-pas".into(),
            org: Some("RX1".into()),
            request_id: Some("req-1".into()),
        };
        let now = crate::fhir::instant::now_millis();
        let out = for_write(
            &[
                version("Patient", Operation::Update),
                version("Observation", Operation::Update),
                version("Encounter", Operation::Create),
                version("Provenance", Operation::Create),
            ],
            &author,
            now,
            None,
        );
        assert_eq!(out.len(), 2);
        let update: Value = serde_json::from_str(out[1].content.as_deref().unwrap()).unwrap();
        assert_eq!(update["target"][0]["reference"], "Patient/x/_history/2");
        assert_eq!(update["target"].as_array().unwrap().len(), 2);
        assert_eq!(update["activity"]["coding"][0]["code"], "UPDATE");
        assert_eq!(update["agent"][0]["who"]["identifier"]["value"], "RX1");
        assert_eq!(update["entity"][0]["what"]["identifier"]["value"], "req-1");
    }
}
