//! Placeholder until the definitions-driven validator lands (branch `validation`).

use crate::fhir::outcome::Issue;

const TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Bundle",
    "Condition",
    "DocumentReference",
    "Encounter",
    "Location",
    "Medication",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "OperationOutcome",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
];

pub fn validate_resource(_resource: &serde_json::Value) -> Vec<Issue> {
    Vec::new()
}

pub fn is_resource_type(name: &str) -> bool {
    TYPES.contains(&name)
}

pub fn resource_types() -> impl Iterator<Item = &'static str> {
    TYPES.iter().copied()
}
