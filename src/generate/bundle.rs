//! Transaction Bundle assembly and the small FHIR JSON building blocks every resource uses.

use serde_json::{Value, json};

pub(crate) const SNOMED: &str = "http://snomed.info/sct";
pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
pub(crate) const DMD: &str = "https://dmd.nhs.uk";
pub(crate) const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub(crate) const GMC: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
pub(crate) const NMC: &str = "https://fhir.hl7.org.uk/Id/nmc-number";
pub(crate) const SDS_USER: &str = "https://fhir.nhs.uk/Id/sds-user-id";
pub(crate) const SDS_ROLE_PROFILE: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
pub(crate) const SDS_JOB_ROLE: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName";
pub(crate) const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub(crate) const NHS_VERIFICATION_EXT: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
pub(crate) const NHS_VERIFICATION_CS: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland";

/// `meta` naming the UK Core profile for a resource type.
pub(crate) fn meta(resource_type: &str) -> Value {
    json!({ "profile": [format!("https://fhir.hl7.org.uk/StructureDefinition/UKCore-{resource_type}")] })
}

pub(crate) fn identifier(system: &str, value: &str) -> Value {
    json!({ "system": system, "value": value })
}

pub(crate) fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

pub(crate) fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)], "text": display })
}

/// A CodeableConcept with a coding but no text, for status-like elements.
pub(crate) fn status_concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)] })
}

pub(crate) fn reference(target: &str) -> Value {
    json!({ "reference": target })
}

/// A reference the receiving server resolves by business identifier, so bundles can point at
/// Organizations and Practitioners created by an earlier bundle without knowing their ids.
pub(crate) fn conditional(resource_type: &str, system: &str, value: &str) -> String {
    format!("{resource_type}?identifier={system}|{value}")
}

pub(crate) fn urn(id: uuid::Uuid) -> String {
    format!("urn:uuid:{id}")
}

/// Entries of one transaction Bundle. Every entry is a conditional create keyed on the
/// resource's own business identifier, so loading a file twice converges instead of duplicating.
#[derive(Default)]
pub(crate) struct BundleBuilder {
    entries: Vec<Value>,
}

impl BundleBuilder {
    pub(crate) fn add(&mut self, full_url: &str, resource: Value, system: &str, value: &str) {
        let resource_type = resource["resourceType"]
            .as_str()
            .expect("resourceType")
            .to_owned();
        // Moved in by assignment: `json!` would deep-copy an embedded Value through serde.
        let mut entry = json!({
            "fullUrl": full_url,
            "request": {
                "method": "POST",
                "url": resource_type,
                "ifNoneExist": format!("identifier={system}|{value}"),
            }
        });
        entry["resource"] = resource;
        self.entries.push(entry);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn finish(self, id_system: &str, id_value: &str, timestamp: &str) -> Value {
        let mut bundle = json!({
            "resourceType": "Bundle",
            "identifier": identifier(id_system, id_value),
            "type": "transaction",
            "timestamp": timestamp,
        });
        bundle["entry"] = Value::Array(self.entries);
        bundle
    }
}
