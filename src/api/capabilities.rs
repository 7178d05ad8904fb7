//! `/metadata`: the CapabilityStatement, generated from the interactions the router serves.

use serde_json::{Value, json};

use crate::governance::product::Product;
use crate::interactions::criteria::SUPPORTED_PARAMETERS;
use crate::search::params::{ParamType, Registry};
use crate::validation::profiles::Profiles;

/// Date of this capability set; changes with the interactions below.
const RELEASE_DATE: &str = "2026-11-27";

/// What changed in this release, newest first (CHANGELOG.md has the whole history).
const CHANGES: &str = "2026-11-27: an update carrying the current content writes no new version (200 with the current version). 2026-11-26: consumer registry (unknown or suspended clients are refused), $validate with UK Core and shcr profiles, sandbox writes (X-Shcr-Sandbox), fhirVersion negotiation, per-client throttling (429 + Retry-After), lifecycle headers; application/json+fhir deprecated (sunset 2027-06-30). 2026-11-25: search, subscriptions, messaging.";

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

/// Extension carrying one entry of shcr's API lifecycle (name, status, dates, replacement).
pub const LIFECYCLE_EXTENSION: &str =
    "https://fhir.shcr.example.nhs.uk/StructureDefinition/api-lifecycle";

/// Whole-system interactions.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

pub fn capability_statement(
    base_url: &str,
    issuer: &str,
    registry: &Registry,
    product: &Product,
    profiles: &Profiles,
) -> Value {
    let resources: Vec<Value> = crate::validation::resource_types()
        .map(|t| {
            let supported_profiles: Vec<&str> =
                profiles.for_type(t).map(|p| p.url.as_str()).collect();
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
                "supportedProfile": supported_profiles,
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
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
        "version": env!("CARGO_PKG_VERSION"),
        "date": RELEASE_DATE,
        "description": format!("shcr shared care record. Changes: {CHANGES}"),
        // The lifecycle of shcr's own operations, headers and media types (governance/api.toml).
        "extension": product.lifecycle.iter().map(|f| {
            let mut ext = vec![
                json!({"url": "name", "valueString": f.name}),
                json!({"url": "status", "valueCode": f.status.code()}),
                json!({"url": "since", "valueDate": f.since}),
            ];
            if let Some(d) = &f.deprecated { ext.push(json!({"url": "deprecated", "valueDate": d})); }
            if let Some(s) = &f.sunset { ext.push(json!({"url": "sunset", "valueDate": s})); }
            if let Some(r) = &f.replacement { ext.push(json!({"url": "replacement", "valueString": r})); }
            json!({"url": LIFECYCLE_EXTENSION, "extension": ext})
        }).collect::<Vec<_>>(),
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
                "Conditional create, update and delete accept the parameters {}. Every client is \
                 registered (unknown or suspended clients get 401/403) and throttled per its \
                 registry entry (429 with Retry-After). Send X-Shcr-Sandbox: true with a write to \
                 run it without storing anything. Developer portal: {}/docs.",
                SUPPORTED_PARAMETERS.join(", "),
                base_url.trim_end_matches("/fhir")
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
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
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
