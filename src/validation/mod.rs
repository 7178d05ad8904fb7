//! Structural validation of FHIR R4 resources in JSON, against the base R4 definitions.
//!
//! Every resource a trust sends passes through here before it is stored, so that the record
//! only ever holds data any R4 system can read back. The definitions are data
//! (`definitions/r4/`, generated from the published R4 StructureDefinitions and ValueSets by
//! `scripts/gen-fhir-definitions.py`), embedded in the binary and parsed on first use.
//!
//! # What is checked
//! - the top level is a JSON object whose `resourceType` is an R4 resource type;
//! - every property is an element of its type (misspellings, `_x` companions without a primitive
//!   `x`, choice elements with a type R4 does not allow are reported as unknown);
//! - cardinality: required elements present, repeating elements written as arrays (R4 JSON
//!   requires it), non-repeating ones not, and no more items than allowed;
//! - choice elements (`value[x]`): one variant at most;
//! - primitives: JSON type (a number where a string is required is an error) and the R4 lexical
//!   rules (see [`primitives`](self::primitives)), dates checked against the calendar;
//! - primitive companions (`_birthDate`, `_given` aligned with `given`, `null` placeholders);
//! - no empty objects, empty arrays, empty strings, or `null` outside aligned primitive arrays;
//! - required value-set bindings: on `code` elements always (when the value set can be
//!   enumerated), on `Coding`/`CodeableConcept` for codings whose system the value set lists;
//! - resources inside resources (`contained`, `Bundle.entry.resource`,
//!   `Parameters.parameter.resource`) as the type they declare;
//! - extensions: `url` required, `value[x]` types as the base Extension allows, nesting.
//!
//! # What is not checked
//! - FHIRPath invariants (`constraint`s), e.g. ele-1 beyond "no empty objects", ext-1 (value or
//!   nested extensions, not both), dom-2..dom-6 on contained resources, per-resource rules such
//!   as obs-6/obs-7, bdl-1..bdl-12, txt-1/txt-2 (narrative XHTML content), ref-1, qty-3 (UCUM);
//! - profiles here (see [`profiles`]: `$validate` and rules as data), extension definitions (an extension's URL is not
//!   resolved, so its value type and context are checked only against the base Extension);
//! - reference targets (`Reference(Patient)`), preferred/extensible/example bindings, and value
//!   sets the package cannot enumerate (MIME types, currencies, UCUM; see
//!   `definitions/r4/README.md`);
//! - duplicate JSON keys (serde_json keeps the last).
//!
//! # Locations
//! Each issue's location is a FHIRPath expression from the resource type: `Patient.name[0].given[1]`.
//! Array items carry their index; a choice element is written with its FHIRPath name and
//! `ofType`: `Observation.value.ofType(Quantity).unit`; a resource inside another names its type
//! the same way: `Bundle.entry[2].resource.ofType(Observation).status`,
//! `Patient.contained[0].ofType(Organization).name`. An unknown property is located by its JSON
//! name (`Patient.birthdate`, `Patient._foo`), since it has no FHIRPath name. An issue about the
//! top level itself (not an object, no `resourceType`) has no location.

mod model;
mod primitives;
pub mod profiles;
mod walker;

use serde_json::Value;

use crate::fhir::outcome::Issue;

pub use walker::MAX_ISSUES;

/// Validates one resource (of any R4 type, including Bundles and the resources they carry).
/// Returns every finding; an empty list means the resource is structurally valid R4.
pub fn validate_resource(resource: &Value) -> Vec<Issue> {
    let mut w = walker::Walker::new();
    w.resource_root(resource);
    w.issues
}

/// Whether `name` is a concrete R4 resource type (`Patient`, not `DomainResource`).
pub fn is_resource_type(name: &str) -> bool {
    model::MODEL.resource(name).is_some()
}

/// All R4 resource type names, sorted.
pub fn resource_types() -> impl Iterator<Item = &'static str> {
    model::MODEL.resources.iter().map(|(name, _)| *name)
}

/// Parses the embedded definitions now rather than on the first request (a few milliseconds);
/// call at start-up.
pub fn load_definitions() {
    std::sync::LazyLock::force(&model::MODEL);
}

const SUMMARY_TSV: &str = include_str!("../../definitions/r4/summary.tsv");

static SUMMARY: std::sync::LazyLock<std::collections::HashMap<&'static str, Vec<String>>> =
    std::sync::LazyLock::new(|| {
        SUMMARY_TSV
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (t, names) = l.split_once('\t')?;
                Some((
                    t,
                    names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect(),
                ))
            })
            .collect()
    });

/// Top-level elements of `resource_type` marked isSummary (choice elements as `name[x]`), for
/// `_summary=true`.
pub fn summary_elements(resource_type: &str) -> &'static [String] {
    SUMMARY.get(resource_type).map(Vec::as_slice).unwrap_or(&[])
}
