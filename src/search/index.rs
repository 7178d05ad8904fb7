//! The tantivy index: its schema, and the document a resource becomes. One schema for every
//! resource type; parameters are prefixes inside shared fields (see `terms`).

use std::path::Path;

use serde_json::Value;
use tantivy::schema::{
    BytesOptions, FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions,
};
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer};
use tantivy::{Index, TantivyDocument};

use super::compartments::patient_params;
use super::extract::{Extracted, IndexValue, extract_some, text_content};
use super::params::{ParamType, Registry};
use super::terms::{SEP, any, hex_f64, hex_i64, local, quantity_qualifiers};

/// Bumped whenever the document layout changes: an index of another version is rebuilt.
pub const SCHEMA_VERSION: u32 = 5;

/// The `_id` parameter: not indexed as a token, the planner answers it from `key`.
pub const ID: &str = "_id";

/// The `comp` term of a resource in no patient compartment (Organization, Practitioner …), so
/// access filters can name such resources.
pub const NO_COMPARTMENT: &str = "-";

pub const FOLDED: &str = "folded";

#[derive(Clone, Copy)]
pub struct Fields {
    pub resource_type: Field,
    /// Stored and a column, not indexed.
    pub id: Field,
    /// `Type/id`: the delete key, how `_has` names the resources it found, and what `_id`
    /// searches (there are no `_id` token terms).
    pub key: Field,
    pub version: Field,
    pub last_updated: Field,
    pub token: Field,
    pub token_text: Field,
    pub string: Field,
    pub exact: Field,
    pub reference: Field,
    pub reference_identifier: Field,
    pub low: Field,
    pub high: Field,
    pub number: Field,
    pub uri: Field,
    /// Codes of parameters with at least one value (`:missing`).
    pub has: Field,
    /// `Patient/{id}` of every patient compartment the resource is in.
    pub compartment: Field,
    /// ODS code of the trust that wrote the version (for access policies).
    pub author_org: Field,
    pub narrative: Field,
    pub content: Field,
    /// Packed values for predicates terms cannot decide.
    pub packed: Field,
    /// Packed sort keys.
    pub sort: Field,
}

pub fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(FOLDED)
            .set_index_option(IndexRecordOption::Basic),
    );
    let fields = Fields {
        resource_type: b.add_text_field("type", STRING | FAST),
        // Not indexed: `key` finds a resource; a second unique term per document only made
        // every segment's term dictionary larger to build (reindex spent most of its time
        // building dictionaries).
        id: b.add_text_field("id", STORED | FAST),
        key: b.add_text_field("key", STRING),
        version: b.add_i64_field("version", STORED | FAST),
        // Sorting and result metadata read the column; `_lastUpdated` filters use its
        // parameter's terms.
        last_updated: b.add_i64_field("last_updated", FAST),
        token: b.add_text_field("tok", STRING),
        token_text: b.add_text_field("toktext", STRING),
        string: b.add_text_field("str", STRING),
        exact: b.add_text_field("strx", STRING),
        reference: b.add_text_field("ref", STRING),
        reference_identifier: b.add_text_field("refid", STRING),
        low: b.add_text_field("lo", STRING),
        high: b.add_text_field("hi", STRING),
        number: b.add_text_field("num", STRING),
        uri: b.add_text_field("uri", STRING),
        has: b.add_text_field("has", STRING),
        compartment: b.add_text_field("comp", STRING),
        author_org: b.add_text_field("org", STRING),
        narrative: b.add_text_field("narrative", text.clone()),
        content: b.add_text_field("content", text),
        packed: b.add_bytes_field("packed", BytesOptions::default().set_fast()),
        sort: b.add_bytes_field("sort", BytesOptions::default().set_fast()),
    };
    (b.build(), fields)
}

fn register_tokenizers(index: &Index) {
    index.tokenizers().register(
        FOLDED,
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter)
            .build(),
    );
}

/// Opens the index in `dir`, or creates it. `Err` means the folder holds something unusable;
/// the caller rebuilds.
pub fn open_or_create(dir: &Path) -> tantivy::Result<(Index, Fields)> {
    let (schema, fields) = schema();
    std::fs::create_dir_all(dir)?;
    let directory = tantivy::directory::MmapDirectory::open(dir)?;
    let index = Index::open_or_create(directory, schema)?;
    register_tokenizers(&index);
    Ok((index, fields))
}

pub fn in_memory() -> (Index, Fields) {
    let (schema, fields) = schema();
    let index = Index::create_in_ram(schema);
    register_tokenizers(&index);
    (index, fields)
}

/// What the indexer knows of a resource besides its JSON.
pub struct IndexRow<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version_id: i64,
    pub last_updated_micros: i64,
    pub author_org: Option<&'a str>,
    pub resource: &'a Value,
}

/// Whether a reference value names a resource on this server.
pub fn is_local(url: &str, base: &str) -> bool {
    !url.contains("://") || url.starts_with(base)
}

fn sort_key(value: &IndexValue) -> Option<Vec<u8>> {
    Some(match value {
        IndexValue::String { normalised, .. } => normalised.as_bytes().to_vec(),
        IndexValue::Token { code, text, .. } => {
            code.as_ref().or(text.as_ref())?.as_bytes().to_vec()
        }
        IndexValue::Reference { url, .. } => url.as_bytes().to_vec(),
        IndexValue::Date { low, .. } => hex_i64(*low).into_bytes(),
        IndexValue::Number { value, .. } | IndexValue::Quantity { value, .. } => {
            hex_f64(*value).into_bytes()
        }
        IndexValue::Uri(u) => u.as_bytes().to_vec(),
        _ => return None,
    })
}

fn sort_key_high(value: &IndexValue) -> Option<Vec<u8>> {
    match value {
        IndexValue::Date { high, .. } => Some(hex_i64(*high).into_bytes()),
        other => sort_key(other),
    }
}

/// Sort keys: per parameter its smallest key (ascending sorts) and largest (descending).
pub fn pack_sort_keys(extracted: &[Extracted<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in extracted {
        let min = e.values.iter().filter_map(sort_key).min();
        let max = e.values.iter().filter_map(sort_key_high).max();
        if let (Some(min), Some(max)) = (min, max) {
            for part in [e.param.code.as_bytes(), &min, &max] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
    }
    out
}

/// The (smallest, largest) sort keys of `code` in packed sort keys.
pub fn unpack_sort_key<'a>(bytes: &'a [u8], code: &str) -> Option<(&'a [u8], &'a [u8])> {
    let mut rest = bytes;
    let take = |rest: &mut &'a [u8]| -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let part = rest.get(4..4 + len)?;
        *rest = &rest[4 + len..];
        Some(part)
    };
    while !rest.is_empty() {
        let c = take(&mut rest)?;
        let min = take(&mut rest)?;
        let max = take(&mut rest)?;
        if c == code.as_bytes() {
            return Some((min, max));
        }
    }
    None
}

/// Adds a document's terms through one reused buffer: joining each term's parts into a new
/// `String`, which `add_text` then copied into the document, was an allocation per term
/// (~70 for an Observation).
struct Terms<'d> {
    doc: &'d mut TantivyDocument,
    buf: String,
}

impl Terms<'_> {
    /// Adds `parts` joined by `SEP` (as `terms::join`) to `field`.
    fn add(&mut self, field: Field, parts: &[&str]) {
        self.buf.clear();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.buf.push(SEP);
            }
            self.buf.push_str(p);
        }
        self.doc.add_text(field, &self.buf);
    }
}

fn add_values(doc: &mut Terms<'_>, f: &Fields, code: &str, values: &[IndexValue], base: &str) {
    for v in values {
        match v {
            IndexValue::String { normalised, exact } => {
                doc.add(f.string, &[code, normalised]);
                doc.add(f.exact, &[code, exact]);
            }
            IndexValue::Token {
                system,
                code: value,
                text,
                of_type,
            } => {
                if let Some(value) = value {
                    let system = system.as_deref().unwrap_or("");
                    doc.add(f.token, &[code, system, value]);
                    doc.add(f.token, &[code, any(), value]);
                    if let Some((ts, tc)) = of_type {
                        doc.add(f.token, &[&format!("{code}:of-type"), ts, tc, value]);
                    }
                }
                if let Some(system) = system.as_deref().filter(|s| !s.is_empty()) {
                    doc.add(f.token, &[code, system, any()]);
                }
                if let Some(text) = text {
                    let folded = super::normalise::fold_string(text);
                    for word in folded
                        .split(|c: char| !c.is_alphanumeric())
                        .filter(|w| !w.is_empty())
                    {
                        doc.add(f.token_text, &[code, word]);
                    }
                }
            }
            IndexValue::Reference {
                resource_type,
                id,
                url,
                identifier,
                ..
            } => {
                if !url.is_empty() {
                    if let (true, Some(t), Some(id)) = (is_local(url, base), resource_type, id) {
                        // No any-type term: the planner expands a bare id to the parameter's
                        // target types.
                        doc.add(f.reference, &[code, &local(t, id)]);
                    } else {
                        doc.add(f.reference, &[code, url]);
                    }
                }
                if let Some((system, value)) = identifier {
                    doc.add(
                        f.reference_identifier,
                        &[code, system.as_deref().unwrap_or(""), value],
                    );
                    doc.add(f.reference_identifier, &[code, any(), value]);
                }
            }
            IndexValue::Date { low, high } => {
                doc.add(f.low, &[code, &hex_i64(*low)]);
                doc.add(f.high, &[code, &hex_i64(*high)]);
            }
            IndexValue::Number { value, .. } => {
                doc.add(f.number, &[code, any(), &hex_f64(*value)]);
            }
            IndexValue::Quantity {
                value,
                system,
                code: unit_code,
                unit,
                ..
            } => {
                let value = hex_f64(*value);
                for q in
                    quantity_qualifiers(system.as_deref(), unit_code.as_deref(), unit.as_deref())
                {
                    doc.add(f.number, &[code, &q, &value]);
                }
            }
            IndexValue::Uri(u) => doc.add(f.uri, &[code, u]),
            IndexValue::Composite(parts) => {
                // Components are indexed under `code$i` so terms can pre-select candidates; the
                // packed items decide which components belong together.
                for (i, component) in parts.iter().enumerate() {
                    add_values(doc, f, &format!("{code}${i}"), component, base);
                }
            }
            IndexValue::Position { .. } => {}
        }
    }
}

/// The document for a resource's current version.
pub fn document(
    f: &Fields,
    registry: &Registry,
    base: &str,
    row: &IndexRow<'_>,
) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_text(f.resource_type, row.resource_type);
    doc.add_text(f.id, row.id);
    doc.add_text(f.key, local(row.resource_type, row.id));
    doc.add_i64(f.version, row.version_id);
    doc.add_i64(f.last_updated, row.last_updated_micros);
    if let Some(org) = row.author_org {
        doc.add_text(f.author_org, org);
    }
    let extracted = extract_some(registry, row.resource, |code| code != ID);
    let mut packed_groups: Vec<(&str, &[IndexValue])> = Vec::new();
    let mut terms = Terms {
        doc: &mut doc,
        buf: String::with_capacity(128),
    };
    for e in &extracted {
        let code = e.param.code.as_str();
        terms.doc.add_text(f.has, code);
        add_values(&mut terms, f, code, &e.values, base);
        if matches!(
            e.param.param_type,
            ParamType::Date | ParamType::Composite | ParamType::Reference
        ) {
            packed_groups.push((code, &e.values));
        }
    }
    let patients = compartment_ids(row.resource_type, row.id, &extracted, base);
    if patients.is_empty() {
        doc.add_text(f.compartment, NO_COMPARTMENT);
    }
    for id in patients {
        doc.add_text(f.compartment, format!("Patient/{id}"));
    }
    doc.add_bytes(f.packed, &super::packed::pack(packed_groups.into_iter()));
    doc.add_bytes(f.sort, &pack_sort_keys(&extracted));
    let (narrative, content) = text_content(row.resource);
    if !narrative.is_empty() {
        doc.add_text(f.narrative, narrative);
    }
    if !content.is_empty() {
        doc.add_text(f.content, content);
    }
    doc
}

/// Ids of the patients whose compartment holds the resource: the Patient itself, or the
/// patients its compartment parameters reference on this server.
fn compartment_ids(
    resource_type: &str,
    id: &str,
    extracted: &[Extracted<'_>],
    base: &str,
) -> Vec<String> {
    compartment_of_candidates(&candidates(resource_type, id, extracted), base)
}

/// The patient references of a resource's compartment, before the server's base is applied:
/// pairs of (patient id, reference URL if absolute, else `""`), flattened.
fn candidates(resource_type: &str, id: &str, extracted: &[Extracted<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    if resource_type == "Patient" {
        out.push(id.to_string());
        out.push(String::new());
    }
    let params = patient_params(resource_type);
    for e in extracted {
        if !params.iter().any(|p| p == &e.param.code) {
            continue;
        }
        for v in &e.values {
            if let IndexValue::Reference {
                resource_type: Some(t),
                id: Some(pid),
                url,
                ..
            } = v
                && t == "Patient"
            {
                out.push(pid.clone());
                out.push(if url.contains("://") {
                    url.clone()
                } else {
                    String::new()
                });
            }
        }
    }
    out
}

/// The patient compartment from `compartment_candidates` on the server at `base`: the ids of
/// relative references and of absolute ones on this server, first occurrence order.
pub fn compartment_of_candidates(candidates: &[String], base: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in candidates.chunks(2) {
        let [pid, url] = pair else {
            break;
        };
        if (url.is_empty() || is_local(url, base)) && !out.contains(pid) {
            out.push(pid.clone());
        }
    }
    out
}

/// What `patient_compartments` would give on any server, kept with each stored version (see
/// `compartment_of_candidates`) so that a read needs neither the JSON nor the extraction.
pub fn compartment_candidates(
    registry: &Registry,
    resource_type: &str,
    id: &str,
    resource: &Value,
) -> Vec<String> {
    compartment_values(registry, resource_type, resource).map_or_else(Vec::new, |extracted| {
        candidates(resource_type, id, &extracted)
    })
}

/// The values of `resource`'s compartment parameters; `None` for a type in no compartment.
fn compartment_values<'r>(
    registry: &'r Registry,
    resource_type: &str,
    resource: &Value,
) -> Option<Vec<Extracted<'r>>> {
    let params = patient_params(resource_type);
    if resource_type != "Patient" && params.is_empty() {
        return None;
    }
    Some(super::extract::extract_some(registry, resource, |code| {
        params.iter().any(|p| p == code)
    }))
}

/// Bumped whenever the extraction of compartment references changes in code, so that stored
/// candidates computed the old way are no longer trusted.
const COMPARTMENT_CODE_VERSION: u8 = 1;

/// Names the compartment extraction of `registry`: the compartment parameters' definitions
/// for every resource type, and the code's version. Stored candidates computed under another
/// key (other search parameters, older code) are ignored and the compartment recomputed.
pub fn compartment_key(registry: &Registry) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([COMPARTMENT_CODE_VERSION]);
    for t in super::compartments::patient_compartment_types() {
        let params = patient_params(&t);
        h.update(t.as_bytes());
        h.update([0]);
        for b in registry.bound_for(&t) {
            let param = registry.param(b.param);
            if !params.iter().any(|p| p == &param.code) {
                continue;
            }
            h.update(param.code.as_bytes());
            h.update([0]);
            h.update(format!("{:?}", param.param_type).as_bytes());
            h.update([0]);
            h.update(b.expression.as_ref().map_or("", |e| e.source()).as_bytes());
            h.update([0]);
        }
        h.update([1]);
    }
    let digest = h.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The patient compartments of a resource exactly as the index records them (access policy
/// decisions on loaded resources must agree with the index filter).
pub fn patient_compartments(
    registry: &Registry,
    base: &str,
    resource_type: &str,
    id: &str,
    resource: &Value,
) -> Vec<String> {
    compartment_values(registry, resource_type, resource).map_or_else(Vec::new, |extracted| {
        compartment_ids(resource_type, id, &extracted, base)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The compartment kept with a stored version, applied to a base, is exactly the one the
    /// index computes on that base: reads decide on the one, searches filter on the other.
    #[test]
    fn stored_candidates_give_the_index_compartment_on_every_base() {
        let registry = Registry::load(None).expect("built-in parameters");
        let ours = "https://shcr.example/fhir";
        let resources = [
            json!({"resourceType": "Observation", "id": "o1", "status": "final",
                   "code": {"text": "x"},
                   "subject": {"reference": "Patient/p1"},
                   "performer": [{"reference": "Patient/p2/_history/3"},
                                 {"reference": "https://shcr.example/fhir/Patient/p3"},
                                 {"reference": "https://elsewhere.example/fhir/Patient/p4"},
                                 {"reference": "Practitioner/d1"}]}),
            json!({"resourceType": "Observation", "id": "o2", "status": "final",
                   "code": {"text": "x"},
                   "subject": {"reference": "https://elsewhere.example/fhir/Patient/p4"}}),
            json!({"resourceType": "Patient", "id": "p1",
                   "link": [{"other": {"reference": "Patient/p5"}, "type": "seealso"}]}),
            json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
                   "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Organization", "id": "org1"}),
        ];
        for r in &resources {
            let t = r["resourceType"].as_str().unwrap();
            let id = r["id"].as_str().unwrap();
            let stored = compartment_candidates(&registry, t, id, r);
            for base in [
                ours,
                "https://elsewhere.example/fhir",
                "http://127.0.0.1:1/fhir",
            ] {
                assert_eq!(
                    compartment_of_candidates(&stored, base),
                    patient_compartments(&registry, base, t, id, r),
                    "{t}/{id} on {base}"
                );
            }
        }
        let o1 = compartment_of_candidates(
            &compartment_candidates(&registry, "Observation", "o1", &resources[0]),
            ours,
        );
        assert!(o1.contains(&"p1".to_string()) && o1.contains(&"p3".to_string()));
        assert!(!o1.contains(&"p4".to_string()), "another server's patient");
    }

    /// The terms a document no longer holds: `_id` tokens (the planner uses `key`), and the
    /// ids and identifier values `_content` used to split into words.
    #[test]
    fn documents_hold_the_key_not_id_tokens_nor_reference_words() {
        use crate::search::terms::{ANY, join};
        use tantivy::Term;
        let registry = Registry::load(None).expect("built-in parameters");
        let (index, f) = in_memory();
        let observation = json!({"resourceType": "Observation",
            "id": "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70", "status": "final",
            "identifier": [{"system": "https://rx1.example.nhs.uk/obs", "value": "Q4417"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                                 "display": "Heart rate"}]},
            "subject": {"reference": "Patient/5b1e2c3d-0a9f-4c8e-b7d6-e5f4a3b2c1d0",
                        "display": "Zoë Brontë"}});
        let row = IndexRow {
            resource_type: "Observation",
            id: "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70",
            version_id: 1,
            last_updated_micros: 0,
            author_org: None,
            resource: &observation,
        };
        let mut writer: tantivy::IndexWriter = index
            .writer_with_num_threads(1, 15_000_000)
            .expect("writer");
        writer
            .add_document(document(&f, &registry, "https://shcr.example/fhir", &row))
            .expect("add");
        writer.commit().expect("commit");
        let searcher = index.reader().expect("reader").searcher();
        let freq = |field: Field, text: &str| {
            searcher
                .doc_freq(&Term::from_field_text(field, text))
                .expect("doc_freq")
        };
        let id = "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70";
        assert_eq!(freq(f.key, &local("Observation", id)), 1);
        // The key and references of a UUID id hold it in 22 characters, not its 36 (see
        // `terms::local`).
        assert_eq!(freq(f.key, &format!("Observation/{id}")), 0);
        for system in [String::new(), ANY.to_string()] {
            let id = join(&[ID, &system, "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70"]);
            assert_eq!(freq(f.token, &id), 0, "{id}");
        }
        assert_eq!(freq(f.has, ID), 0);
        let patient = "5b1e2c3d-0a9f-4c8e-b7d6-e5f4a3b2c1d0";
        assert_eq!(
            freq(f.reference, &join(&["subject", &local("Patient", patient)])),
            1
        );
        assert_eq!(
            freq(
                f.reference,
                &join(&["subject", &format!("Patient/{patient}")])
            ),
            0
        );
        assert_eq!(
            freq(
                f.reference,
                &join(&["subject", &format!("{ANY}/{patient}")])
            ),
            0,
            "a bare id is planned as each target type's term"
        );
        assert_eq!(
            freq(f.token, &join(&["identifier", &ANY.to_string(), "Q4417"])),
            1
        );
        for word in ["heart", "zoe", "bronte"] {
            assert_eq!(freq(f.content, word), 1, "{word}");
        }
        for word in ["q4417", "patient", "5b1e2c3d", "e5f4a3b2c1d0"] {
            assert_eq!(freq(f.content, word), 0, "{word}");
        }
    }

    #[test]
    fn the_compartment_key_names_the_registry() {
        let a = Registry::load(None).expect("built-in parameters");
        let b = Registry::load(None).expect("built-in parameters");
        assert_eq!(compartment_key(&a), compartment_key(&b));
    }
}
