//! An audit row rendered as a FHIR AuditEvent in the IHE BALP style.

use serde_json::{Value, json};

use super::AuditRecord;
use crate::fhir::instant::format_instant;

fn subtype(interaction: &str) -> &str {
    match interaction {
        "search" => "search-type",
        other => other,
    }
}

pub fn audit_event(seq: i64, r: &AuditRecord) -> Value {
    let mut entities: Vec<Value> = r
        .patients
        .iter()
        .map(|p| {
            json!({
                "what": {"reference": format!("Patient/{p}")},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
            })
        })
        .collect();
    if let (Some(t), Some(id)) = (&r.resource_type, &r.resource_id) {
        entities.push(json!({
            "what": {"reference": format!("{t}/{id}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"}
        }));
    }
    if let Some(q) = &r.query {
        use base64::Engine as _;
        entities.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(q)
        }));
    }
    let purpose = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": r.purpose}]}]);
    let mut user = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "who": {"identifier": {"system": if r.caller_kind == "user" { "https://fhir.nhs.uk/Id/sds-user-id" } else { "urn:shcr:client-id" }, "value": r.caller_id.as_deref().unwrap_or("anonymous")}},
        "requestor": true,
        "purposeOfUse": purpose,
    });
    if let Some(name) = &r.caller_name {
        user["who"]["display"] = json!(name);
    }
    if let Some(role) = &r.role_code {
        user["role"] = json!([{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode", "code": role}]}]);
    }
    if let Some(org) = &r.org {
        user["location"] = json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": org}});
    }
    let mut extension = Vec::new();
    if let Some(id) = &r.request_id {
        extension.push(json!({"url": "https://shcr.example.nhs.uk/fhir/StructureDefinition/request-id", "valueString": id}));
    }
    if let Some(g) = r.break_glass_id {
        extension.push(json!({"url": "https://shcr.example.nhs.uk/fhir/StructureDefinition/break-glass-grant", "valueString": g.to_string()}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": seq.to_string(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype(&r.interaction)}],
        "action": r.action,
        "recorded": r.recorded_at.map(format_instant),
        "outcome": r.outcome.to_string(),
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": r.purpose}]}],
        "agent": [user, {
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152", "display": "Destination Role ID"}]},
            "who": {"display": "shcr"},
            "requestor": false,
            "network": r.client_ip.as_ref().map(|ip| json!({"address": ip, "type": "2"}))
        }],
        "source": {
            "observer": {"display": "shcr"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]
        },
        "entity": entities,
    });
    if r.client_ip.is_none()
        && let Some(agent) = event["agent"][1].as_object_mut()
    {
        agent.remove("network");
    }
    if let Some(d) = &r.outcome_desc {
        event["outcomeDesc"] = json!(d);
    }
    if !extension.is_empty() {
        event["extension"] = Value::Array(extension);
    }
    event
}
