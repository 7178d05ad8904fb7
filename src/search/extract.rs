//! Index values of a resource: every search parameter of its type, evaluated and turned into
//! the values the index stores. Driven entirely by the [`Registry`]: no field of any resource
//! type is named here, only datatypes (`HumanName`, `Period`, `Identifier`, …).

use serde_json::{Map, Value};

use super::fhirpath::model::{MODEL, TypeRef};
use super::fhirpath::{FhirType, Node};
use super::normalise::{date_range, fold_string, instant, number_range, parse_reference};
use super::params::{ParamType, Registry, SearchParam};

/// One value of one parameter, in the form search compares.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// String parameters: `normalised` is lowercase, accent-folded and whitespace-collapsed
    /// ([`fold_string`]) for the default starts-with match and `:contains`; `exact` is as
    /// written, for `:exact`. A `HumanName` or `Address` gives one value per part (family,
    /// each given, prefix, suffix, text; each line, city, district, state, postalCode,
    /// country, text).
    String { normalised: String, exact: String },
    /// Token parameters. `Coding`: system, code, display as `text`. `CodeableConcept`: one
    /// per coding, plus one with only `text` when it has a `text`. `Identifier`: system and
    /// value as `code`, `type.text` as `text`, and for `:of-type` one value per `type` coding
    /// with `of_type` = (its system, its code). `ContactPoint`: its `system` (`phone`,
    /// `email`, …) and `value`. `boolean`: code `true`/`false`. `code`, `id`, `string`,
    /// `uri` used as a token: the code, no system.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
        of_type: Option<(String, String)>,
    },
    /// Reference parameters. `url` is the reference without its version: `Type/id` for a
    /// relative reference, an absolute URL as written, `#id` for a contained target (whose
    /// type is filled in, but no id: a contained resource cannot be searched for on its own),
    /// a canonical URL without its `|version`; empty for a logical reference that has only an
    /// identifier. `resource_type`/`id` come from the trailing `Type/id` of relative and
    /// absolute references (absolute ones may be on another server: compare `url` with this
    /// server's base before treating them as local), or from `Reference.type`. `identifier`
    /// is `Reference.identifier` (system, value), for `:identifier`. `version` is the
    /// `_history` version or the canonical's `|version`. A resource selected directly
    /// (`Bundle.entry[0].resource`) gives `Type/id`.
    Reference {
        resource_type: Option<String>,
        id: Option<String>,
        url: String,
        identifier: Option<(Option<String>, String)>,
        version: Option<String>,
    },
    /// Date parameters: the instants the value covers, UTC epoch microseconds, inclusive
    /// ([`date_range`]: a date or dateTime covers its whole precision, a value without a zone
    /// is UTC). An `instant` is the single microsecond it names. `Period`: start's low to
    /// end's high, a missing end being `i64::MAX` (ongoing) and a missing start `i64::MIN`.
    /// `Timing`: one value per `event`, and its `repeat.boundsPeriod` as a Period.
    Date { low: i64, high: i64 },
    /// Number parameters: the value and the range its written precision implies
    /// ([`number_range`]). A `Range` gives `low.value`'s low to `high.value`'s high (an
    /// absent side unbounded), with `value` the midpoint (or the one side given).
    Number { value: f64, low: f64, high: f64 },
    /// Quantity parameters: as for numbers, with the unit. `Quantity.comparator` widens the
    /// range to the side it opens (`<5` covers everything below 5). `Money`: system
    /// `urn:iso:std:iso:4217`, code and unit the currency. `Range`: as for numbers, the units
    /// of whichever side has them. `SampledData` gives nothing (its values are not a
    /// quantity a search can state).
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// Uri parameters: as written.
    Uri(String),
    /// Composite parameters: one value per item the parameter's expression selects (the
    /// Observation, or each `Observation.component`), holding for each component, in
    /// definition order, all of that component's values on the item. An item that lacks any
    /// component gives nothing.
    Composite(Vec<Vec<IndexValue>>),
    /// Special parameters over `Location.position` (`near`): degrees, WGS84.
    Position { latitude: f64, longitude: f64 },
}

/// The values of one parameter on one resource.
#[derive(Debug)]
pub struct Extracted<'r> {
    pub param: &'r SearchParam,
    pub values: Vec<IndexValue>,
}

/// Every parameter of the resource's type that has at least one value, in the order of
/// [`Registry::params_for`]. `_text` and `_content` are not among them: see [`text_content`].
pub fn extract<'r>(registry: &'r Registry, resource: &Value) -> Vec<Extracted<'r>> {
    extract_some(registry, resource, |_| true)
}

/// As `extract`, for the parameters `wanted` accepts only (access decisions need only the
/// compartment parameters, on every read).
pub fn extract_some<'r>(
    registry: &'r Registry,
    resource: &Value,
    wanted: impl Fn(&str) -> bool,
) -> Vec<Extracted<'r>> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let bound = registry.bound_for(resource_type);
    let root = Node::resource(resource);
    let mut out = Vec::with_capacity(bound.len());
    for b in bound {
        let Some(expression) = &b.expression else {
            continue;
        };
        let param = registry.param(b.param);
        if !wanted(&param.code) {
            continue;
        }
        let nodes = expression.evaluate_on(root, root);
        if nodes.is_empty() {
            continue;
        }
        let mut values = Vec::new();
        if param.param_type == ParamType::Composite {
            composite_values(param, &nodes, root, &mut values);
        } else {
            for n in &nodes {
                node_values(param.param_type, n, resource, &mut values);
            }
        }
        if !values.is_empty() {
            out.push(Extracted { param, values });
        }
    }
    out
}

fn composite_values<'a>(
    param: &'a SearchParam,
    items: &[Node<'a>],
    root: Node<'a>,
    out: &mut Vec<IndexValue>,
) {
    let resource = root.value().expect("a resource node");
    'items: for item in items {
        let mut parts = Vec::with_capacity(param.components.len());
        for (i, (_, expression)) in param.components.iter().enumerate() {
            let Some(t) = param.component_type(i) else {
                continue 'items;
            };
            let mut values = Vec::new();
            for n in &expression.evaluate_on(*item, root) {
                node_values(t, n, resource, &mut values);
            }
            if values.is_empty() {
                continue 'items;
            }
            parts.push(values);
        }
        out.push(IndexValue::Composite(parts));
    }
}

/// The values one selected node gives for a parameter of type `t`. Datatypes a parameter
/// type cannot use (an `Age` for a date parameter, an `Attachment` for a reference) give none.
fn node_values(t: ParamType, n: &Node, resource: &Value, out: &mut Vec<IndexValue>) {
    match t {
        ParamType::String => string_values(n, out),
        ParamType::Token => token_values(n, out),
        ParamType::Reference => reference_values(n, resource, out),
        ParamType::Date => date_values(n, out),
        ParamType::Number => number_values(n, out),
        ParamType::Quantity => quantity_values(n, out),
        ParamType::Uri => {
            if let Some(s) = n.as_str() {
                out.push(IndexValue::Uri(s.to_string()));
            }
        }
        ParamType::Special => {
            if let Some(obj) = object(n)
                && let (Some(latitude), Some(longitude)) = (
                    obj.get("latitude").and_then(Value::as_f64),
                    obj.get("longitude").and_then(Value::as_f64),
                )
            {
                out.push(IndexValue::Position {
                    latitude,
                    longitude,
                });
            }
        }
        ParamType::Composite => {}
    }
}

fn object<'a>(n: &Node<'a>) -> Option<&'a Map<String, Value>> {
    n.value().and_then(Value::as_object)
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    super::fhirpath::object_get(obj, key).and_then(Value::as_str)
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

fn push_string(s: &str, out: &mut Vec<IndexValue>) {
    let normalised = fold_string(s);
    if !normalised.is_empty() {
        out.push(IndexValue::String {
            normalised,
            exact: s.to_string(),
        });
    }
}

fn string_values(n: &Node, out: &mut Vec<IndexValue>) {
    if let Some(s) = n.as_str() {
        return push_string(s, out);
    }
    let Some(obj) = object(n) else {
        return;
    };
    let parts: &[&str] = match n.type_name() {
        "HumanName" => &["family", "given", "prefix", "suffix", "text"],
        "Address" => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => return,
    };
    for part in parts {
        match obj.get(*part) {
            Some(Value::String(s)) => push_string(s, out),
            Some(Value::Array(items)) => {
                for s in items.iter().filter_map(Value::as_str) {
                    push_string(s, out);
                }
            }
            _ => {}
        }
    }
}

fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: owned(system),
        code: owned(code),
        text: owned(text),
        of_type: None,
    }
}

fn coding_token(obj: &Map<String, Value>) -> Option<IndexValue> {
    let (system, code, display) = (
        str_field(obj, "system"),
        str_field(obj, "code"),
        str_field(obj, "display"),
    );
    (system.is_some() || code.is_some() || display.is_some()).then(|| token(system, code, display))
}

fn token_values(n: &Node, out: &mut Vec<IndexValue>) {
    let obj = match n {
        Node::Boolean(b) => return out.push(token(None, Some(bool_code(*b)), None)),
        Node::String(s) => return out.push(token(None, Some(s), None)),
        Node::Element { value, .. } => match value {
            Value::Object(obj) => obj,
            Value::String(s) => return out.push(token(None, Some(s), None)),
            Value::Bool(b) => return out.push(token(None, Some(bool_code(*b)), None)),
            Value::Number(x) => return out.push(token(None, Some(&x.to_string()), None)),
            _ => return,
        },
        _ => return,
    };
    match n.type_name() {
        "Coding" => out.extend(coding_token(obj)),
        "CodeableConcept" => {
            if let Some(Value::Array(codings)) = obj.get("coding") {
                out.extend(
                    codings
                        .iter()
                        .filter_map(Value::as_object)
                        .filter_map(coding_token),
                );
            }
            if let Some(text) = str_field(obj, "text") {
                out.push(token(None, None, Some(text)));
            }
        }
        "Identifier" => {
            let (system, value) = (str_field(obj, "system"), str_field(obj, "value"));
            let ty = obj.get("type").and_then(Value::as_object);
            let type_text = ty.and_then(|t| str_field(t, "text"));
            let type_codings: Vec<(&str, &str)> = ty
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
                .collect();
            if system.is_none() && value.is_none() && type_text.is_none() {
                return;
            }
            if type_codings.is_empty() {
                out.push(token(system, value, type_text));
            }
            for (type_system, type_code) in type_codings {
                out.push(IndexValue::Token {
                    system: owned(system),
                    code: owned(value),
                    text: owned(type_text),
                    of_type: Some((type_system.to_string(), type_code.to_string())),
                });
            }
        }
        "ContactPoint" => {
            if let Some(value) = str_field(obj, "value") {
                out.push(token(str_field(obj, "system"), Some(value), None));
            }
        }
        _ => {}
    }
}

fn bool_code(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn reference_values(n: &Node, resource: &Value, out: &mut Vec<IndexValue>) {
    if let Some(s) = n.as_str() {
        // canonical / uri used as a reference.
        let r = parse_reference(s);
        return out.push(IndexValue::Reference {
            resource_type: owned(r.resource_type),
            id: owned(r.id),
            url: r.url.to_string(),
            identifier: None,
            version: owned(r.version),
        });
    }
    let (Some(obj), Node::Element { ty, .. }) = (object(n), n) else {
        return;
    };
    if ty.is_resource() {
        if let Some(id) = str_field(obj, "id") {
            let t = ty.name();
            out.push(IndexValue::Reference {
                resource_type: Some(t.to_string()),
                id: Some(id.to_string()),
                url: format!("{t}/{id}"),
                identifier: None,
                version: None,
            });
        }
        return;
    }
    if n.type_name() != "Reference" {
        return;
    }
    let identifier = obj
        .get("identifier")
        .and_then(Value::as_object)
        .and_then(|i| {
            Some((
                owned(str_field(i, "system")),
                str_field(i, "value")?.to_string(),
            ))
        });
    let declared = str_field(obj, "type");
    let value = match str_field(obj, "reference") {
        Some(reference) => {
            let r = parse_reference(reference);
            let resource_type = match r.contained {
                Some(id) => contained_type(resource, id),
                None => r.resource_type.or(declared),
            };
            IndexValue::Reference {
                resource_type: owned(resource_type),
                id: owned(r.id),
                url: r.url.to_string(),
                identifier,
                version: owned(r.version),
            }
        }
        None if identifier.is_some() => IndexValue::Reference {
            resource_type: owned(declared),
            id: None,
            url: String::new(),
            identifier,
            version: None,
        },
        None => return,
    };
    out.push(value);
}

fn contained_type<'a>(resource: &'a Value, id: &str) -> Option<&'a str> {
    if id.is_empty() {
        return resource.get("resourceType").and_then(Value::as_str);
    }
    resource
        .get("contained")?
        .as_array()?
        .iter()
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))?
        .get("resourceType")?
        .as_str()
}

fn date_values(n: &Node, out: &mut Vec<IndexValue>) {
    let range = match (n.type_name(), n.as_str()) {
        ("instant", Some(s)) => instant(s).map(|t| (t, t)),
        // Only date types: a `string` such as `Procedure.performedString` may read "2020"
        // and still not be a date.
        ("date" | "dateTime", Some(s)) => date_range(s),
        _ => None,
    };
    if let Some((low, high)) = range {
        out.push(IndexValue::Date { low, high });
        return;
    }
    let Some(obj) = object(n) else {
        return;
    };
    match n.type_name() {
        "Period" => period(obj, out),
        "Timing" => {
            if let Some(Value::Array(events)) = obj.get("event") {
                for e in events.iter().filter_map(Value::as_str) {
                    if let Some((low, high)) = date_range(e) {
                        out.push(IndexValue::Date { low, high });
                    }
                }
            }
            if let Some(bounds) = obj
                .get("repeat")
                .and_then(|r| r.get("boundsPeriod"))
                .and_then(Value::as_object)
            {
                period(bounds, out);
            }
        }
        _ => {}
    }
}

fn period(obj: &Map<String, Value>, out: &mut Vec<IndexValue>) {
    let start = str_field(obj, "start");
    let end = str_field(obj, "end");
    if start.is_none() && end.is_none() {
        return;
    }
    let low = match start.map(date_range) {
        Some(Some((low, _))) => low,
        Some(None) => return,
        None => i64::MIN,
    };
    let high = match end.map(date_range) {
        Some(Some((_, high))) => high,
        Some(None) => return,
        None => i64::MAX,
    };
    out.push(IndexValue::Date { low, high });
}

fn number_values(n: &Node, out: &mut Vec<IndexValue>) {
    if let Some(Value::Number(x)) = n.value() {
        if let Some((value, low, high)) = number_range(x) {
            out.push(IndexValue::Number { value, low, high });
        }
        return;
    }
    if let Some(obj) = object(n)
        && n.type_name() == "Range"
        && let Some((value, low, high, _)) = range(obj)
    {
        out.push(IndexValue::Number { value, low, high });
    }
}

/// A Range's value (midpoint, or the side given), its bounds, and the quantity with units.
fn range(obj: &Map<String, Value>) -> Option<(f64, f64, f64, &Map<String, Value>)> {
    let side = |key| {
        let q = obj.get(key)?.as_object()?;
        let (v, lo, hi) = number_range(q.get("value")?.as_number()?)?;
        Some((v, lo, hi, q))
    };
    match (side("low"), side("high")) {
        (Some((l, low, _, q)), Some((h, _, high, _))) => Some(((l + h) / 2.0, low, high, q)),
        (Some((l, low, _, q)), None) => Some((l, low, f64::INFINITY, q)),
        (None, Some((h, _, high, q))) => Some((h, f64::NEG_INFINITY, high, q)),
        (None, None) => None,
    }
}

fn quantity_values(n: &Node, out: &mut Vec<IndexValue>) {
    let Some(obj) = object(n) else {
        return;
    };
    let Node::Element { ty, .. } = n else {
        return;
    };
    if MODEL.is_a(*ty, MODEL.quantity) {
        let Some((value, mut low, mut high)) = obj
            .get("value")
            .and_then(Value::as_number)
            .and_then(number_range)
        else {
            return;
        };
        match str_field(obj, "comparator") {
            Some("<" | "<=") => low = f64::NEG_INFINITY,
            Some(">" | ">=") => high = f64::INFINITY,
            _ => {}
        }
        out.push(IndexValue::Quantity {
            value,
            low,
            high,
            system: owned(str_field(obj, "system")),
            code: owned(str_field(obj, "code")),
            unit: owned(str_field(obj, "unit")),
        });
        return;
    }
    match n.type_name() {
        "Money" => {
            if let Some((value, low, high)) = obj
                .get("value")
                .and_then(Value::as_number)
                .and_then(number_range)
            {
                let currency = owned(str_field(obj, "currency"));
                out.push(IndexValue::Quantity {
                    value,
                    low,
                    high,
                    system: currency
                        .as_ref()
                        .map(|_| "urn:iso:std:iso:4217".to_string()),
                    code: currency.clone(),
                    unit: currency,
                });
            }
        }
        "Range" => {
            if let Some((value, low, high, q)) = range(obj) {
                out.push(IndexValue::Quantity {
                    value,
                    low,
                    high,
                    system: owned(str_field(q, "system")),
                    code: owned(str_field(q, "code")),
                    unit: owned(str_field(q, "unit")),
                });
            }
        }
        _ => {}
    }
}

/// The text `_text` and `_content` search: the narrative as plain text, and every
/// human-readable string of the resource (`string` and `markdown` elements, which hold names,
/// displays, descriptions and notes, at any depth, contained resources included) after the
/// narrative text. Codes, identifiers, URIs and dates are left out: they are searched through
/// their own parameters, and would only add noise to free-text matching. So are the two
/// `string` elements that are not text a person writes: `Identifier.value` (searched with
/// `identifier`) and `Reference.reference` (`Type/id` or a URL, searched with the reference
/// parameters and `_id`); their UUIDs and numbers were words only one resource held, each an
/// entry built into the index's dictionaries for that resource alone.
pub fn text_content(resource: &Value) -> (String, String) {
    let narrative = resource
        .get("text")
        .and_then(|t| t.get("div"))
        .and_then(Value::as_str)
        .map(xhtml_text)
        .unwrap_or_default();
    let mut content = narrative.clone();
    let string = FhirType::named("string").expect("string");
    let markdown = FhirType::named("markdown").expect("markdown");
    let not_text = [
        (FhirType::named("Identifier").expect("Identifier"), "value"),
        (
            FhirType::named("Reference").expect("Reference"),
            "reference",
        ),
    ];
    let wanted = Wanted {
        types: &[string, markdown],
        not_text: &not_text,
    };
    collect_strings(resource, TypeRef::AnyResource, &wanted, &mut content);
    (narrative, content)
}

/// The elements `collect_strings` gathers: of these types, except these (type, element) pairs.
struct Wanted<'a> {
    types: &'a [FhirType],
    not_text: &'a [(FhirType, &'a str)],
}

fn collect_strings(v: &Value, t: TypeRef, wanted: &Wanted<'_>, out: &mut String) {
    let ty = match t {
        TypeRef::Type(ty) => ty,
        TypeRef::AnyResource => match Node::resource(v) {
            Node::Element { ty, .. } => ty,
            _ => return,
        },
    };
    match v {
        Value::Array(items) => {
            for item in items {
                collect_strings(item, t, wanted, out);
            }
        }
        Value::String(s) if wanted.types.contains(&ty) => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        Value::Object(obj) => {
            let Some(def) = MODEL.ty(ty) else {
                return;
            };
            for (key, value) in obj {
                if wanted.not_text.contains(&(ty, key.as_str())) {
                    continue;
                }
                if let Some(&child) = def.keys.get(key.as_str()) {
                    collect_strings(value, child, wanted, out);
                }
            }
        }
        _ => {}
    }
}

/// The text of an XHTML narrative: tags dropped, entities decoded, whitespace collapsed.
/// Block-level tags separate words (`<td>a</td><td>b</td>` is "a b").
fn xhtml_text(div: &str) -> String {
    let mut raw = String::with_capacity(div.len());
    let mut rest = div;
    while let Some(i) = rest.find(['<', '&']) {
        raw.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with('<') {
            let (tag, end) = match rest.find('>') {
                Some(e) => (&rest[1..e], e + 1),
                None => (&rest[1..], rest.len()),
            };
            let name = tag
                .trim_start_matches('/')
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("");
            if !matches!(
                name,
                "b" | "i" | "u" | "em" | "strong" | "span" | "a" | "sub" | "sup" | "small" | "big"
            ) {
                raw.push(' ');
            }
            rest = &rest[end..];
        } else {
            // Entity names are short; a `;` further on belongs to the text.
            let end = rest.find(';').filter(|&e| e <= 12);
            let decoded = end.and_then(|e| entity(&rest[1..e]));
            match (end, decoded) {
                (Some(e), Some(c)) => {
                    raw.push(c);
                    rest = &rest[e + 1..];
                }
                _ => {
                    raw.push('&');
                    rest = &rest[1..];
                }
            }
        }
    }
    raw.push_str(rest);
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        _ => {
            let n = name.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)?
        }
    })
}
