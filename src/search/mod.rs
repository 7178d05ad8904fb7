//! FHIR search: SearchParameter definitions as data, the values each resource is indexed under,
//! the tantivy index that follows the change feed, and the query engine over it.

pub mod columns;
pub mod compartments;
pub mod engine;
pub mod extract;
pub mod fhirpath;
pub mod filter_cache;
pub mod index;
pub mod indexer;
pub mod matching;
pub mod merge_priority;
pub mod normalise;
pub mod packed;
pub mod params;
pub mod plan;
pub mod query;
pub mod rank;
pub mod terms;
