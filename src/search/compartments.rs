//! The Patient compartment (the official R4 CompartmentDefinition, as data): which reference
//! parameters put a resource in a patient's compartment. Compartment search
//! (`Patient/{id}/Observation`) and, later, patient-scoped access filters use it.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

const PATIENT: &str = include_str!("../../definitions/r4/compartmentdefinition-patient.json");

static PATIENT_PARAMS: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    let definition: Value = serde_json::from_str(PATIENT).expect("compartment definition JSON");
    definition["resource"]
        .as_array()
        .expect("CompartmentDefinition.resource")
        .iter()
        .filter_map(|r| {
            let code = r["code"].as_str()?.to_string();
            let params: Vec<String> = r["param"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            Some((code, params))
        })
        .collect()
});

/// Reference parameters of `resource_type` that place it in a patient's compartment.
pub fn patient_params(resource_type: &str) -> &'static [String] {
    PATIENT_PARAMS
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Every resource type that can be in a patient's compartment, `Patient` included: what a
/// longitudinal view (`$everything`) searches.
pub fn patient_compartment_types() -> Vec<String> {
    let mut types: Vec<String> = PATIENT_PARAMS
        .iter()
        .filter(|(_, params)| !params.is_empty())
        .map(|(t, _)| t.clone())
        .collect();
    if !types.iter().any(|t| t == "Patient") {
        types.push("Patient".into());
    }
    types.sort();
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_and_allergy_params() {
        assert!(patient_params("Observation").iter().any(|p| p == "subject"));
        assert!(
            patient_params("AllergyIntolerance")
                .iter()
                .any(|p| p == "patient")
        );
        assert!(patient_params("Organization").is_empty());
    }
}
