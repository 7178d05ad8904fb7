//! The R4 structure tables (`definitions/r4/*.tsv`), parsed once into lookup structures.
//!
//! Everything borrows from the embedded table text, so the only allocations are the vectors
//! built here at start-up; validation itself looks things up without allocating.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

const ELEMENTS_TSV: &str = include_str!("../../definitions/r4/elements.tsv");
const VALUESETS_TSV: &str = include_str!("../../definitions/r4/valuesets.tsv");

pub(crate) static MODEL: LazyLock<Model> =
    LazyLock::new(|| Model::parse(ELEMENTS_TSV, VALUESETS_TSV));

pub(crate) type TypeId = u16;

/// Elements of a type are tracked in a `u128` presence mask while an object is walked.
pub(crate) const MAX_ELEMENTS_PER_TYPE: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prim {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Prim {
    fn from_name(name: &str) -> Option<Prim> {
        Some(match name {
            "base64Binary" => Prim::Base64Binary,
            "boolean" => Prim::Boolean,
            "canonical" => Prim::Canonical,
            "code" => Prim::Code,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "decimal" => Prim::Decimal,
            "id" => Prim::Id,
            "instant" => Prim::Instant,
            "integer" => Prim::Integer,
            "markdown" => Prim::Markdown,
            "oid" => Prim::Oid,
            "positiveInt" => Prim::PositiveInt,
            "string" => Prim::String,
            "time" => Prim::Time,
            "unsignedInt" => Prim::UnsignedInt,
            "uri" => Prim::Uri,
            "url" => Prim::Url,
            "uuid" => Prim::Uuid,
            "xhtml" => Prim::Xhtml,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Resource,
    Complex,
    Backbone,
    Primitive(Prim),
}

/// What an element's value is validated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRef {
    Type(TypeId),
    /// `Resource`: any resource, validated as the type its `resourceType` declares.
    AnyResource,
}

#[derive(Debug)]
pub(crate) struct ElementDef {
    /// Name without the `[x]` of a choice element (the FHIRPath name).
    pub name: &'static str,
    pub min: u32,
    /// `u32::MAX` for `*`.
    pub max: u32,
    pub choice: bool,
    /// XML attributes (`Element.id`, `Extension.url`) have no `_name` companion in JSON.
    pub attribute: bool,
    pub binding: Option<u16>,
}

impl ElementDef {
    pub fn is_array(&self) -> bool {
        self.max > 1
    }
}

/// One JSON property name a type accepts: a choice element contributes one per type.
#[derive(Debug)]
pub(crate) struct Key {
    pub json: &'static str,
    pub element: u8,
    pub ty: TypeRef,
    /// The type name used in `ofType(...)` for a choice element.
    pub type_name: &'static str,
}

#[derive(Debug)]
pub(crate) struct TypeDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The R4 regex of a primitive's value (kept for the cross-check tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub regex: Option<&'static str>,
    pub elements: Vec<ElementDef>,
    /// Sorted by `json`.
    pub keys: Vec<Key>,
    /// JSON property name -> index in `keys`.
    index: HashMap<&'static str, u8, BuildHasherDefault<FxHasher>>,
    /// Bit i set when element i has `min > 0`.
    pub required_mask: u128,
}

impl TypeDef {
    #[inline]
    pub fn key(&self, json: &str) -> Option<&Key> {
        self.index.get(json).map(|&i| &self.keys[i as usize])
    }
}

#[derive(Debug)]
pub(crate) struct ValueSet {
    /// The short name elements.tsv refers to.
    pub key: &'static str,
    pub url: &'static str,
    /// (system, sorted codes); `None` codes: the system cannot be enumerated, so is not checked.
    pub systems: Vec<(&'static str, Option<Vec<&'static str>>)>,
}

impl ValueSet {
    /// For a `code` element: `None` when the value set cannot be fully enumerated.
    pub fn contains_code(&self, code: &str) -> Option<bool> {
        let mut found = false;
        for (_, codes) in &self.systems {
            let codes = codes.as_ref()?;
            found |= codes.binary_search(&code).is_ok();
        }
        Some(found)
    }

    /// For a Coding: `None` when the system is not one this value set enumerates.
    pub fn contains_coding(&self, system: &str, code: &str) -> Option<bool> {
        let (_, codes) = self.systems.iter().find(|(s, _)| *s == system)?;
        Some(codes.as_ref()?.binary_search(&code).is_ok())
    }
}

#[derive(Debug)]
pub(crate) struct Model {
    pub types: Vec<TypeDef>,
    pub value_sets: Vec<ValueSet>,
    /// Concrete resource types, sorted by name.
    pub resources: Vec<(&'static str, TypeId)>,
    pub coding: TypeId,
    pub codeable_concept: TypeId,
}

impl Model {
    pub fn resource(&self, name: &str) -> Option<TypeId> {
        self.resources
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| self.resources[i].1)
    }

    #[inline]
    pub fn ty(&self, id: TypeId) -> &TypeDef {
        &self.types[id as usize]
    }

    /// Parses the tables. They are generated and embedded, so a malformed table is a build
    /// defect: panicking at first use (and in every test) is the right response.
    fn parse(elements: &'static str, valuesets: &'static str) -> Model {
        let value_sets = parse_value_sets(valuesets);
        let vs_index: HashMap<&str, u16> = value_sets
            .iter()
            .enumerate()
            .map(|(i, vs)| (vs.key, i as u16))
            .collect();

        struct RawElement {
            name: &'static str,
            min: u32,
            max: u32,
            types: Vec<&'static str>,
            binding: Option<u16>,
        }
        let mut raw: Vec<(Kind, &'static str, Option<&'static str>, Vec<RawElement>)> = Vec::new();
        for line in elements.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let mut cols = rest.split('\t');
                let mut next = || {
                    cols.next()
                        .unwrap_or_else(|| panic!("short element line: {line}"))
                };
                let name = next();
                let min = next().parse().expect("element min");
                let max = match next() {
                    "*" => u32::MAX,
                    n => n.parse().expect("element max"),
                };
                let types = next().split(',').collect();
                let binding = cols.next().map(|key| {
                    *vs_index
                        .get(key)
                        .unwrap_or_else(|| panic!("unknown value set {key}"))
                });
                let block = raw.last_mut().expect("element line before any type");
                block.3.push(RawElement {
                    name,
                    min,
                    max,
                    types,
                    binding,
                });
            } else {
                let mut cols = line.split('\t');
                let kind = cols.next().expect("kind");
                let name = cols.next().expect("type name");
                let regex = cols.next();
                let kind = match kind {
                    "R" => Kind::Resource,
                    "C" => Kind::Complex,
                    "B" => Kind::Backbone,
                    "P" => Kind::Primitive(
                        Prim::from_name(name).unwrap_or_else(|| panic!("unknown primitive {name}")),
                    ),
                    other => panic!("unknown kind {other}"),
                };
                raw.push((kind, name, regex, Vec::new()));
            }
        }

        let ids: HashMap<&str, TypeId> = raw
            .iter()
            .enumerate()
            .map(|(i, (_, name, _, _))| (*name, i as TypeId))
            .collect();
        let resolve = |t: &str| -> TypeRef {
            if t == "Resource" {
                TypeRef::AnyResource
            } else {
                TypeRef::Type(*ids.get(t).unwrap_or_else(|| panic!("unknown type {t}")))
            }
        };

        let mut types = Vec::with_capacity(raw.len());
        for (kind, name, regex, raw_elements) in raw {
            assert!(
                raw_elements.len() <= MAX_ELEMENTS_PER_TYPE,
                "{name} has too many elements"
            );
            let mut elements = Vec::with_capacity(raw_elements.len());
            let mut keys = Vec::new();
            let mut required_mask = 0u128;
            for (i, e) in raw_elements.into_iter().enumerate() {
                let (attribute, name) = match e.name.strip_prefix('@') {
                    Some(n) => (true, n),
                    None => (false, e.name),
                };
                let (choice, name) = match name.strip_suffix("[x]") {
                    Some(n) => (true, n),
                    None => (false, name),
                };
                if choice {
                    for t in &e.types {
                        let mut json = String::with_capacity(name.len() + t.len());
                        json.push_str(name);
                        let mut chars = t.chars();
                        if let Some(first) = chars.next() {
                            json.extend(first.to_uppercase());
                            json.push_str(chars.as_str());
                        }
                        keys.push(Key {
                            // Built once for the life of the process; leaking keeps lookups on
                            // plain `&'static str`.
                            json: Box::leak(json.into_boxed_str()),
                            element: i as u8,
                            ty: resolve(t),
                            type_name: t,
                        });
                    }
                } else {
                    assert_eq!(e.types.len(), 1, "{name}: several types but not a choice");
                    keys.push(Key {
                        json: name,
                        element: i as u8,
                        ty: resolve(e.types[0]),
                        type_name: e.types[0],
                    });
                }
                if e.min > 0 {
                    required_mask |= 1u128 << i;
                }
                elements.push(ElementDef {
                    name,
                    min: e.min,
                    max: e.max,
                    choice,
                    attribute,
                    binding: e.binding,
                });
            }
            keys.sort_by(|a, b| a.json.cmp(b.json));
            for w in keys.windows(2) {
                assert!(
                    w[0].json != w[1].json,
                    "{name}: duplicate key {}",
                    w[0].json
                );
            }
            assert!(
                keys.len() <= usize::from(u8::MAX),
                "{name} has too many keys"
            );
            let index = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.json, i as u8))
                .collect();
            types.push(TypeDef {
                name,
                kind,
                regex,
                elements,
                keys,
                index,
                required_mask,
            });
        }

        let mut resources: Vec<(&'static str, TypeId)> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == Kind::Resource)
            .map(|(i, t)| (t.name, i as TypeId))
            .collect();
        resources.sort_unstable();
        Model {
            coding: ids["Coding"],
            codeable_concept: ids["CodeableConcept"],
            types,
            value_sets,
            resources,
        }
    }
}

fn parse_value_sets(text: &'static str) -> Vec<ValueSet> {
    let mut out: Vec<ValueSet> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            let mut cols = rest.split('\t');
            let system = cols.next().expect("system");
            let codes: Vec<&'static str> = cols.collect();
            let codes = if codes == ["*"] {
                None
            } else {
                let mut codes = codes;
                codes.sort_unstable();
                Some(codes)
            };
            out.last_mut()
                .expect("system line before any value set")
                .systems
                .push((system, codes));
        } else {
            let mut cols = line.split('\t');
            assert_eq!(cols.next(), Some("V"), "bad value set line: {line}");
            let key = cols.next().expect("value set key");
            let url = cols.next().expect("value set url");
            out.push(ValueSet {
                key,
                url,
                systems: Vec::new(),
            });
        }
    }
    out
}

/// The Fx hash (rustc's): element names are short and trusted to be benign (an attacker
/// controls the looked-up keys, not the table), and SipHash would cost more than the lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
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
        self.add(u64::from(i));
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
