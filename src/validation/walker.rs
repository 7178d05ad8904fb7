//! The structural walk over one resource's JSON.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::model::{ElementDef, Key, Kind, MODEL, Model, Prim, TypeDef, TypeId, TypeRef};
use super::primitives::{self, PrimError};
use crate::fhir::outcome::{Issue, IssueType};

/// A malformed bulk upload could otherwise produce an OperationOutcome larger than the input.
pub const MAX_ISSUES: usize = 1000;

/// One step of the location. Locations are only rendered when an issue is reported, so the
/// happy path never allocates a string.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Name(&'a str),
    Index(usize),
    OfType(&'a str),
}

pub(crate) struct Walker<'a> {
    model: &'static Model,
    path: Vec<Seg<'a>>,
    pub issues: Vec<Issue>,
}

impl<'a> Walker<'a> {
    pub fn new() -> Self {
        Walker {
            model: &MODEL,
            path: Vec::with_capacity(16),
            issues: Vec::new(),
        }
    }

    fn location(&self) -> String {
        let mut out = String::new();
        for (i, seg) in self.path.iter().enumerate() {
            match seg {
                Seg::Name(n) if i == 0 => out.push_str(n),
                Seg::Name(n) => {
                    out.push('.');
                    out.push_str(n);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                Seg::OfType(t) => {
                    let _ = write!(out, ".ofType({t})");
                }
            }
        }
        out
    }

    fn report(&mut self, code: IssueType, msg: impl Into<String>) {
        if self.issues.len() < MAX_ISSUES {
            let issue = Issue::error(code, msg);
            self.issues.push(if self.path.is_empty() {
                issue
            } else {
                issue.at(self.location())
            });
        } else if self.issues.len() == MAX_ISSUES {
            self.issues.push(Issue::error(
                IssueType::TooCostly,
                format!("validation stopped after {MAX_ISSUES} issues"),
            ));
        }
    }

    /// Reports at `path + name` without keeping `name` on the stack.
    fn report_at(&mut self, name: &'a str, code: IssueType, msg: impl Into<String>) {
        self.path.push(Seg::Name(name));
        self.report(code, msg);
        self.path.pop();
    }

    /// Top level: a JSON object whose `resourceType` is a known R4 resource.
    pub fn resource_root(&mut self, value: &'a Value) {
        let Value::Object(obj) = value else {
            self.report(
                IssueType::Structure,
                format!("a resource must be a JSON object, not {}", json_kind(value)),
            );
            return;
        };
        let Some(id) = self.resource_type(obj) else {
            return;
        };
        let ty = self.model.ty(id);
        self.path.push(Seg::Name(ty.name));
        self.object(obj, ty);
        self.path.pop();
    }

    /// Resolves `resourceType`, reporting at the current location when it is missing or unknown.
    fn resource_type(&mut self, obj: &'a Map<String, Value>) -> Option<TypeId> {
        match obj.get("resourceType") {
            Some(Value::String(name)) => match self.model.resource(name) {
                Some(id) => Some(id),
                None => {
                    self.report(
                        IssueType::Invalid,
                        format!("'{name}' is not an R4 resource type"),
                    );
                    None
                }
            },
            Some(other) => {
                self.report(
                    IssueType::Structure,
                    format!(
                        "resourceType must be a JSON string, not {}",
                        json_kind(other)
                    ),
                );
                None
            }
            None => {
                self.report(IssueType::Required, "resourceType is missing");
                None
            }
        }
    }

    /// Walks an object of a complex type (datatype, backbone, resource or a primitive's `_x`
    /// companion, whose type lists the companion's `id` and `extension`).
    fn object(&mut self, obj: &'a Map<String, Value>, ty: &'static TypeDef) {
        let is_resource = ty.kind == Kind::Resource;
        if obj.is_empty() {
            self.report(
                IssueType::Structure,
                "an object must have at least one element (ele-1)",
            );
            return;
        }
        // Companion (`_x`) lookups cost a map search per primitive, so only objects that have
        // any pay for them.
        let has_companions = obj.keys().any(|k| k.starts_with('_'));
        let mut present: u128 = 0;
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                self.companion_only(obj, key, base, value, ty, &mut present);
                continue;
            }
            let Some(k) = ty.key(key) else {
                self.unknown(key, ty);
                continue;
            };
            let el = &ty.elements[k.element as usize];
            let bit = 1u128 << k.element;
            if el.choice && present & bit != 0 {
                self.report_at(
                    key,
                    IssueType::Structure,
                    format!("only one of the {}[x] types may be present", el.name),
                );
                continue;
            }
            present |= bit;
            let companion = match (has_companions, k.ty) {
                (true, TypeRef::Type(t)) if matches!(self.model.ty(t).kind, Kind::Primitive(_)) => {
                    companion_of(obj, key)
                }
                _ => None,
            };
            self.element(el, k, value, companion);
        }
        let mut missing = ty.required_mask & !present;
        while missing != 0 {
            let i = missing.trailing_zeros() as usize;
            missing &= missing - 1;
            let el = &ty.elements[i];
            let what = if el.choice { "[x]" } else { "" };
            self.report_at(
                el.name,
                IssueType::Required,
                format!(
                    "{}{what} is required (minimum cardinality {})",
                    el.name, el.min
                ),
            );
        }
    }

    /// A `_x` key. With its `x` present it was handled together with `x`; alone it stands for a
    /// primitive that has only an id and/or extensions.
    fn companion_only(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &'a str,
        base: &'a str,
        value: &'a Value,
        ty: &'static TypeDef,
        present: &mut u128,
    ) {
        let primitive_key = ty.key(base).filter(|k| {
            let el = &ty.elements[k.element as usize];
            !el.attribute
                && matches!(k.ty, TypeRef::Type(t) if matches!(self.model.ty(t).kind, Kind::Primitive(_)))
        });
        let Some(k) = primitive_key else {
            self.unknown(key, ty);
            return;
        };
        if obj.contains_key(base) {
            return;
        }
        let el = &ty.elements[k.element as usize];
        let bit = 1u128 << k.element;
        if el.choice && *present & bit != 0 {
            self.report_at(
                key,
                IssueType::Structure,
                format!("only one of the {}[x] types may be present", el.name),
            );
            return;
        }
        *present |= bit;
        let TypeRef::Type(prim_ty) = k.ty else { return };
        self.push_element(el, k);
        match (el.is_array(), value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.report(IssueType::Structure, "an array must not be empty");
                }
                self.check_max(el, items.len());
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    if item.is_null() {
                        self.report(
                            IssueType::Structure,
                            "null is only allowed where the other array has a value",
                        );
                    } else {
                        self.companion(item, prim_ty);
                    }
                    self.path.pop();
                }
            }
            (true, _) => {
                self.report(
                    IssueType::Structure,
                    format!("_{} must be an array because {} repeats", el.name, el.name),
                );
            }
            (false, Value::Array(_)) => {
                self.report(
                    IssueType::Structure,
                    format!(
                        "_{} must not be an array because {} does not repeat",
                        el.name, el.name
                    ),
                );
            }
            (false, v) => self.companion(v, prim_ty),
        }
        self.pop_element(el);
    }

    fn unknown(&mut self, key: &'a str, ty: &TypeDef) {
        let hint = suggestion(key, ty);
        self.report_at(
            key,
            IssueType::Structure,
            format!("unknown element '{key}' in {}{hint}", ty.name),
        );
    }

    fn push_element(&mut self, el: &'static ElementDef, k: &'static Key) {
        self.path.push(Seg::Name(el.name));
        if el.choice {
            self.path.push(Seg::OfType(k.type_name));
        }
    }

    fn pop_element(&mut self, el: &ElementDef) {
        self.path.pop();
        if el.choice {
            self.path.pop();
        }
    }

    fn check_max(&mut self, el: &ElementDef, len: usize) {
        if len > 0 && len < el.min as usize {
            self.report(
                IssueType::Required,
                format!("at least {} required, found {len}", el.min),
            );
        }
        if el.max != u32::MAX && len > el.max as usize {
            self.report(
                IssueType::Structure,
                format!("at most {} allowed, found {len}", el.max),
            );
        }
    }

    fn element(
        &mut self,
        el: &'static ElementDef,
        k: &'static Key,
        value: &'a Value,
        companion: Option<&'a Value>,
    ) {
        self.push_element(el, k);
        if el.max == 0 {
            self.report(
                IssueType::Structure,
                format!("{} is not allowed here (max 0)", el.name),
            );
        } else if el.is_array() {
            match value {
                Value::Array(items) => {
                    if items.is_empty() {
                        self.report(IssueType::Structure, "an array must not be empty");
                    }
                    self.check_max(el, items.len());
                    let companions = match companion {
                        Some(Value::Array(c)) if c.len() == items.len() => Some(c.as_slice()),
                        Some(Value::Array(c)) => {
                            self.report(
                                IssueType::Structure,
                                format!(
                                    "_{} has {} items but {} has {}; they must align",
                                    el.name,
                                    c.len(),
                                    el.name,
                                    items.len()
                                ),
                            );
                            None
                        }
                        Some(_) => {
                            self.report(
                                IssueType::Structure,
                                format!(
                                    "_{} must be an array because {} repeats",
                                    el.name, el.name
                                ),
                            );
                            None
                        }
                        None => None,
                    };
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        let c = companions.map(|c| &c[i]);
                        self.value(el, k, item, c, true);
                        self.path.pop();
                    }
                }
                Value::Null => {
                    self.report(
                        IssueType::Structure,
                        "null is not allowed; omit the element instead",
                    );
                }
                other => {
                    self.report(
                        IssueType::Structure,
                        format!(
                            "{} repeats (max {}), so it must be a JSON array",
                            el.name,
                            max_text(el.max)
                        ),
                    );
                    // Still look inside, so one mistake does not hide the next.
                    self.value(el, k, other, None, false);
                }
            }
        } else if let Value::Array(items) = value {
            self.report(
                IssueType::Structure,
                format!(
                    "{} does not repeat (max 1), so it must not be an array",
                    el.name
                ),
            );
            // Still look inside, so one mistake does not hide the next.
            for (i, item) in items.iter().enumerate() {
                self.path.push(Seg::Index(i));
                self.value(el, k, item, None, false);
                self.path.pop();
            }
        } else {
            self.value(el, k, value, companion, false);
        }
        self.pop_element(el);
    }

    /// One value of an element (an array item or the single value); the path is already pushed.
    fn value(
        &mut self,
        el: &'static ElementDef,
        k: &'static Key,
        value: &'a Value,
        companion: Option<&'a Value>,
        in_array: bool,
    ) {
        let ty_id = match k.ty {
            TypeRef::AnyResource => {
                self.contained_resource(value, None);
                return;
            }
            TypeRef::Type(t) => t,
        };
        let ty = self.model.ty(ty_id);
        match ty.kind {
            Kind::Primitive(prim) => {
                let companion = companion.filter(|c| !c.is_null());
                if value.is_null() {
                    if !(in_array && companion.is_some()) {
                        self.report(
                            IssueType::Structure,
                            if in_array {
                                "null is only allowed where the _ array has an id or extension"
                            } else {
                                "null is not allowed; omit the element instead"
                            },
                        );
                    }
                } else {
                    self.primitive(prim, ty, value, el);
                }
                if let Some(c) = companion {
                    self.companion(c, ty_id);
                }
            }
            Kind::Resource => self.contained_resource(value, Some(ty_id)),
            Kind::Complex | Kind::Backbone => match value {
                Value::Object(obj) => {
                    self.object(obj, ty);
                    if let Some(vs) = el.binding {
                        self.coded_binding(ty_id, obj, vs);
                    }
                }
                other => self.report(
                    IssueType::Structure,
                    format!(
                        "{} must be a JSON object, not {}",
                        ty.name,
                        json_kind(other)
                    ),
                ),
            },
        }
    }

    fn primitive(&mut self, prim: Prim, ty: &TypeDef, value: &'a Value, el: &ElementDef) {
        if let Err(e) = primitives::check(prim, value) {
            let msg = match e {
                PrimError::JsonType(expected) => {
                    format!("{} must be {expected}, not {}", ty.name, json_kind(value))
                }
                PrimError::Empty => {
                    "empty strings are not allowed; omit the element instead".into()
                }
                PrimError::Invalid(why) => {
                    format!("'{}' is not a valid {}: {why}", shorten(value), ty.name)
                }
            };
            let code = match e {
                PrimError::JsonType(_) => IssueType::Structure,
                _ => IssueType::Value,
            };
            self.report(code, msg);
            return;
        }
        if let (Some(vs), Prim::Code, Value::String(code)) = (el.binding, prim, value) {
            let vs = &self.model.value_sets[vs as usize];
            if vs.contains_code(code) == Some(false) {
                self.report(
                    IssueType::CodeInvalid,
                    format!("'{code}' is not in the required value set {}", vs.url),
                );
            }
        }
    }

    /// `_x` companion of a primitive: an object with `id` and/or `extension`.
    fn companion(&mut self, value: &'a Value, prim_ty: TypeId) {
        match value {
            Value::Object(obj) => self.object(obj, self.model.ty(prim_ty)),
            other => self.report(
                IssueType::Structure,
                format!(
                    "the _ companion must be a JSON object with id and/or extension, not {}",
                    json_kind(other)
                ),
            ),
        }
    }

    /// A resource inside another (`contained`, `Bundle.entry.resource`,
    /// `Parameters.parameter.resource`): validated as the type it declares.
    fn contained_resource(&mut self, value: &'a Value, expected: Option<TypeId>) {
        let Value::Object(obj) = value else {
            self.report(
                IssueType::Structure,
                format!("a resource must be a JSON object, not {}", json_kind(value)),
            );
            return;
        };
        let Some(id) = self.resource_type(obj) else {
            return;
        };
        let ty = self.model.ty(id);
        if let Some(expected) = expected.filter(|e| *e != id) {
            self.report(
                IssueType::Structure,
                format!(
                    "expected a {} resource, found {}",
                    self.model.ty(expected).name,
                    ty.name
                ),
            );
            return;
        }
        self.path.push(Seg::OfType(ty.name));
        self.object(obj, ty);
        self.path.pop();
    }

    /// Required bindings on Coding / CodeableConcept: a coding is checked only when its system is
    /// one the value set enumerates (other systems may carry translations).
    fn coded_binding(&mut self, ty: TypeId, obj: &'a Map<String, Value>, vs: u16) {
        if ty == self.model.coding {
            self.check_coding(obj, vs);
        } else if ty == self.model.codeable_concept
            && let Some(Value::Array(codings)) = obj.get("coding")
        {
            self.path.push(Seg::Name("coding"));
            for (i, c) in codings.iter().enumerate() {
                if let Value::Object(c) = c {
                    self.path.push(Seg::Index(i));
                    self.check_coding(c, vs);
                    self.path.pop();
                }
            }
            self.path.pop();
        }
    }

    fn check_coding(&mut self, coding: &'a Map<String, Value>, vs: u16) {
        let (Some(Value::String(system)), Some(Value::String(code))) =
            (coding.get("system"), coding.get("code"))
        else {
            return;
        };
        let vs = &self.model.value_sets[vs as usize];
        if vs.contains_coding(system, code) == Some(false) {
            self.report_at(
                "code",
                IssueType::CodeInvalid,
                format!(
                    "'{code}' is not a code of {system} in the required value set {}",
                    vs.url
                ),
            );
        }
    }
}

fn companion_of<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    // Keys are short; a stack buffer keeps this allocation-free.
    let mut buf = [0u8; 96];
    let n = key.len() + 1;
    if n > buf.len() {
        return obj.get(&format!("_{key}"));
    }
    buf[0] = b'_';
    buf[1..n].copy_from_slice(key.as_bytes());
    let name = std::str::from_utf8(&buf[..n]).ok()?;
    obj.get(name)
}

fn max_text(max: u32) -> String {
    if max == u32::MAX {
        "*".into()
    } else {
        max.to_string()
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shorten(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(77).collect();
        t.push_str("...");
        t
    } else {
        s
    }
}

/// Helps a sender fix a misspelling or a choice element written without (or with a wrong) type.
fn suggestion(key: &str, ty: &TypeDef) -> String {
    let bare = key.trim_start_matches('_');
    for el in &ty.elements {
        if el.choice && (bare == el.name || bare.starts_with(el.name)) {
            let allowed: Vec<&str> = ty
                .keys
                .iter()
                .filter(|k| ty.elements[k.element as usize].name == el.name)
                .map(|k| k.json)
                .collect();
            if allowed.len() <= 12 {
                return format!(" (did you mean one of {}?)", allowed.join(", "));
            }
            return format!(" ({}[x] needs a type suffix that R4 allows)", el.name);
        }
    }
    let lower = bare.to_ascii_lowercase();
    ty.keys
        .iter()
        .find(|k| k.json.to_ascii_lowercase() == lower || edit_distance_at_most_one(k.json, bare))
        .map(|k| format!(" (did you mean '{}'?)", k.json))
        .unwrap_or_default()
}

fn edit_distance_at_most_one(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    a.len().max(b.len()) - prefix - suffix <= 1
}
