//! `/metadata`: the CapabilityStatement, generated from the interactions the router serves.

use serde_json::{Value, json};

use crate::interactions::criteria::SUPPORTED_PARAMETERS;
use crate::search::params::{ParamType, Registry};

/// Date of this capability set; changes with the interactions below.
const RELEASE_DATE: &str = "2026-11-25";

/// Interactions served for every resource type (see `api::configure`).
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// Whole-system interactions.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

pub fn capability_statement(base_url: &str, issuer: &str, registry: &Registry) -> Value {
    let resources: Vec<Value> = crate::validation::resource_types()
        .map(|t| {
            let search_params: Vec<Value> = registry
                .params_for(t)
                .map(|p| {
                    json!({
                        "name": p.code,
                        "definition": p.url,
                        "type": p.param_type.code(),
                        "documentation": p.description,
                    })
                })
                .collect();
            let includes: Vec<String> = registry
                .params_for(t)
                .filter(|p| p.param_type == ParamType::Reference)
                .map(|p| format!("{t}:{}", p.code))
                .collect();
            json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "local"],
                "searchInclude": includes,
                "searchRevInclude": includes,
                "searchParam": search_params,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "id": "shcr",
        "url": format!("{base_url}/metadata"),
        "name": "ShcrCapabilityStatement",
        "title": "shcr shared care record",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "shcr",
        "kind": "instance",
        "software": { "name": "shcr", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Regional shared care record (FHIR R4, UK Core)", "url": base_url },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": [],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Conditional create, update and delete accept the parameters {}.",
                SUPPORTED_PARAMETERS.join(", ")
            ),
            "security": {
                "cors": false,
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "OAuth"
                    }]
                }],
                "description": format!(
                    "Bearer JWTs from issuer {issuer} (OIDC discovery + JWKS). Trust systems: \
                     client_id + ods_code claims. People: CIS2-style sub, selected_roleid and \
                     nhsid_nrbac_roles claims."
                )
            },
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
            // Events (src/events): routed in `api::configure` before the per-type routes.
            "operation": [
                {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"},
                {"name": "status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"},
                {"name": "events", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"},
                // Identity (src/identity, docs/identity.md).
                {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                 "documentation": "POST Patient/$match: scored candidates with search.score and the match-grade extension."},
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                 "documentation": "GET Patient/{id}/$everything: every resource of every linked Patient across trusts (_since, _type, _count)."},
                {"name": "summary", "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary",
                 "documentation": "GET Patient/{id}/$summary: a document Bundle across linked records; each line names its source trust(s)."},
                {"name": "identity-review", "definition": "https://fhir.shcr.example.nhs.uk/OperationDefinition/identity-review",
                 "documentation": "GET: open possible matches; POST: confirm or reject one (item, decision, reason). Needs activity B0825."},
                {"name": "merge", "definition": "https://fhir.shcr.example.nhs.uk/OperationDefinition/Person-merge",
                 "documentation": "POST Person/$merge: source, target, reason. Needs activity B0825."},
                {"name": "unmerge", "definition": "https://fhir.shcr.example.nhs.uk/OperationDefinition/Person-unmerge",
                 "documentation": "POST Person/$unmerge: decision (of a merge), reason: restores the exact prior split."},
            ],
        }],
        "messaging": [{
            "documentation": "Message Bundles by POST [base]/$process-message (synchronous) or on NATS JetStream subjects <prefix>.<ODS>.<event code>; event codes in the event catalogue.",
            "supportedMessage": [{"mode": "receiver", "definition": "https://fhir.shcr.example.nhs.uk/MessageDefinition/shcr-events"}],
        }]
    })
}
