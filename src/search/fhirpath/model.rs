//! The R4 type model the evaluator walks with: which elements each type has, which of them are
//! choice elements (`value[x]` → `valueQuantity`, `valueString`, …), and what type each JSON
//! property holds.
//!
//! Built from `definitions/r4/elements.tsv` (the table the validator also embeds). The
//! validator's parsed model is private to it and shaped for validation (presence masks, value
//! sets), so this is a second, smaller reading of the same table, keyed by FHIRPath name.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

const ELEMENTS_TSV: &str = include_str!("../../../definitions/r4/elements.tsv");

pub(crate) static MODEL: LazyLock<Model> = LazyLock::new(|| Model::parse(ELEMENTS_TSV));

/// A FHIR type: a resource, a complex or primitive datatype, or a backbone element
/// (`Observation.component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FhirType(pub(crate) u16);

impl FhirType {
    /// The type of a node whose type cannot be known: a resource without a recognised
    /// `resourceType`.
    pub const UNKNOWN: FhirType = FhirType(u16::MAX);

    /// The R4 name (`HumanName`, `dateTime`, `Patient`, `Observation.component`); `"?"` when
    /// unknown.
    pub fn name(self) -> &'static str {
        if self == FhirType::UNKNOWN {
            return "?";
        }
        MODEL.types[self.0 as usize].name
    }

    /// Looks a type up by its R4 name.
    pub fn named(name: &str) -> Option<FhirType> {
        MODEL.by_name.get(name).copied()
    }

    pub fn is_resource(self) -> bool {
        self != FhirType::UNKNOWN && MODEL.types[self.0 as usize].kind == Kind::Resource
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Resource,
    /// `Resource` and `DomainResource`: only ever a type filter or a cast target.
    Abstract,
    Complex,
    Backbone,
    Primitive,
}

/// The type an element's JSON value has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRef {
    Type(FhirType),
    /// `Resource` (contained, `Bundle.entry.resource`): the type its `resourceType` names.
    AnyResource,
}

#[derive(Debug)]
pub(crate) struct Element {
    pub choice: bool,
    /// JSON property name and type; one entry unless a choice element. Sorted by JSON name.
    pub variants: Vec<(&'static str, TypeRef)>,
}

#[derive(Debug)]
pub(crate) struct TypeDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The type this one specialises, for `is`/`as`/`ofType`: see [`Model::is_a`].
    pub parent: Option<FhirType>,
    /// By FHIRPath name (`value`, not `valueQuantity`).
    pub elements: FxMap<&'static str, Element>,
    /// By JSON property name, for walking a resource without an expression.
    pub keys: FxMap<&'static str, TypeRef>,
}

#[derive(Debug)]
pub(crate) struct Model {
    pub types: Vec<TypeDef>,
    pub by_name: FxMap<&'static str, FhirType>,
    pub resource: FhirType,
    pub domain_resource: FhirType,
    pub extension: FhirType,
    pub quantity: FhirType,
    pub boolean: FhirType,
    pub string: FhirType,
    pub decimal: FhirType,
    pub integer: FhirType,
}

impl Model {
    pub fn ty(&self, t: FhirType) -> Option<&TypeDef> {
        self.types.get(t.0 as usize)
    }

    pub fn element(&self, t: FhirType, name: &str) -> Option<&Element> {
        self.ty(t)?.elements.get(name)
    }

    /// The concrete type of a resource from its `resourceType`.
    pub fn resource_type(&self, name: &str) -> FhirType {
        match self.by_name.get(name) {
            Some(&t) if self.types[t.0 as usize].kind == Kind::Resource => t,
            _ => FhirType::UNKNOWN,
        }
    }

    /// Whether a value of type `t` passes `is target` / `as target` / `ofType(target)`.
    ///
    /// Choice elements are distinguished by exact type, as servers read the R4 expressions: the
    /// `source-uri` parameter's `ConceptMap.source as uri` must not also pick up
    /// `sourceCanonical`, although R4 derives `canonical` from `uri`. So primitives match only
    /// themselves; the specialisations kept are the ones the expressions rely on: `Age`,
    /// `Duration`, `Count`, `Distance`, `MoneyQuantity`, `SimpleQuantity` are `Quantity`s, and
    /// every resource is a `Resource` (and a `DomainResource` unless it is a `Bundle`, `Binary`
    /// or `Parameters`).
    pub fn is_a(&self, t: FhirType, target: FhirType) -> bool {
        let mut cur = Some(t);
        while let Some(c) = cur {
            if c == target {
                return true;
            }
            cur = self.ty(c).and_then(|d| d.parent);
        }
        false
    }

    fn parse(text: &'static str) -> Model {
        struct RawType {
            name: &'static str,
            kind: Kind,
            elements: Vec<(&'static str, bool, Vec<&'static str>)>,
        }
        let mut raw: Vec<RawType> = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let mut cols = rest.split('\t');
                let name = cols.next().expect("element name");
                let types = cols.nth(2).expect("element types");
                let name = name.strip_prefix('@').unwrap_or(name);
                let (name, choice) = match name.strip_suffix("[x]") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                let block = raw.last_mut().expect("element line before any type");
                block
                    .elements
                    .push((name, choice, types.split(',').collect()));
            } else {
                let mut cols = line.split('\t');
                let kind = match cols.next().expect("kind") {
                    "R" => Kind::Resource,
                    "C" => Kind::Complex,
                    "B" => Kind::Backbone,
                    "P" => Kind::Primitive,
                    other => panic!("unknown kind {other} in elements.tsv"),
                };
                let name = cols.next().expect("type name");
                raw.push(RawType {
                    name,
                    kind,
                    elements: Vec::new(),
                });
            }
        }
        // The abstract bases the R4 expressions name (`Resource.id`, `resolve() is Resource`);
        // the table only lists concrete types, each with its inherited elements.
        raw.push(RawType {
            name: "Resource",
            kind: Kind::Abstract,
            elements: Vec::new(),
        });
        raw.push(RawType {
            name: "DomainResource",
            kind: Kind::Abstract,
            elements: Vec::new(),
        });

        let mut by_name: FxMap<&'static str, FhirType> = FxMap::default();
        for (i, t) in raw.iter().enumerate() {
            by_name.insert(t.name, FhirType(i as u16));
        }
        let resolve = |t: &str| -> TypeRef {
            if t == "Resource" {
                TypeRef::AnyResource
            } else {
                TypeRef::Type(
                    *by_name
                        .get(t)
                        .unwrap_or_else(|| panic!("unknown type {t} in elements.tsv")),
                )
            }
        };
        let id = |name: &str| by_name[name];
        let resource = id("Resource");
        let domain_resource = id("DomainResource");
        let quantity = id("Quantity");

        let mut types = Vec::with_capacity(raw.len());
        for t in &raw {
            let mut elements = FxMap::default();
            let mut keys = FxMap::default();
            for (name, choice, type_names) in &t.elements {
                let mut variants = Vec::with_capacity(type_names.len());
                for type_name in type_names {
                    let json: &'static str = if *choice {
                        let mut json = String::with_capacity(name.len() + type_name.len());
                        json.push_str(name);
                        let mut chars = type_name.chars();
                        if let Some(first) = chars.next() {
                            json.extend(first.to_uppercase());
                            json.push_str(chars.as_str());
                        }
                        // Built once per process; leaking keeps every lookup on `&'static str`.
                        Box::leak(json.into_boxed_str())
                    } else {
                        name
                    };
                    let ty = resolve(type_name);
                    variants.push((json, ty));
                    keys.insert(json, ty);
                }
                variants.sort_by_key(|(json, _)| *json);
                elements.insert(
                    *name,
                    Element {
                        choice: *choice,
                        variants,
                    },
                );
            }
            let parent = match (t.kind, t.name) {
                (Kind::Resource, "Bundle" | "Binary" | "Parameters") => Some(resource),
                (Kind::Resource, _) => Some(domain_resource),
                (Kind::Abstract, "DomainResource") => Some(resource),
                (
                    Kind::Complex,
                    "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity",
                ) => Some(quantity),
                _ => None,
            };
            types.push(TypeDef {
                name: t.name,
                kind: t.kind,
                parent,
                elements,
                keys,
            });
        }
        Model {
            resource,
            domain_resource,
            extension: id("Extension"),
            quantity,
            boolean: id("boolean"),
            string: id("string"),
            decimal: id("decimal"),
            integer: id("integer"),
            types,
            by_name,
        }
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The rustc hasher (FxHash): the keys are short element names looked up on every path step,
/// where SipHash's per-call setup costs more than the lookup itself. No untrusted input chooses
/// these keys' set, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_elements_know_their_json_names() {
        let obs = FhirType::named("Observation").unwrap();
        let value = MODEL.element(obs, "value").unwrap();
        assert!(value.choice);
        assert!(
            value
                .variants
                .iter()
                .any(|(json, _)| *json == "valueQuantity")
        );
        assert!(
            value
                .variants
                .iter()
                .any(|(json, _)| *json == "valueDateTime")
        );
        let status = MODEL.element(obs, "status").unwrap();
        assert!(!status.choice);
        assert_eq!(status.variants[0].0, "status");
    }

    #[test]
    fn specialisations_used_by_search_expressions() {
        let t = |n| FhirType::named(n).unwrap();
        assert!(MODEL.is_a(t("Age"), t("Quantity")));
        assert!(MODEL.is_a(t("Patient"), t("DomainResource")));
        assert!(MODEL.is_a(t("Bundle"), t("Resource")));
        assert!(!MODEL.is_a(t("Bundle"), t("DomainResource")));
        assert!(!MODEL.is_a(t("canonical"), t("uri")));
    }
}
