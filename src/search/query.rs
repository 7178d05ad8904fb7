//! FHIR search parameters parsed into a typed query: what to match (clauses, ANDed), and how to
//! shape the result (sort, count, total, summary, elements, includes, paging).

use crate::fhir::outcome::{Issue, IssueType};

use super::normalise::{date_range, fold_string};
use super::params::{ParamType, Registry, SearchParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading two-letter prefix off a date/number/quantity value.
    fn split(value: &str) -> (Prefix, &str) {
        let table = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (p, prefix) in table {
            if let Some(rest) = value.strip_prefix(p)
                && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    StartsWith,
    Contains,
    Exact,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    Any,
    /// `|code`: the value has no system.
    None,
    Is(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValuePredicate {
    String {
        mode: StringMode,
        /// Folded for starts-with/contains, as written for exact.
        text: String,
    },
    Token {
        system: SystemMatch,
        /// `None` for `system|` (any code in the system).
        code: Option<String>,
    },
    /// `:text` on a token: the folded words of the query, each a prefix of a word of the text.
    TokenText(String),
    /// `:of-type` on an identifier.
    OfType {
        type_system: String,
        type_code: String,
        value: String,
    },
    Reference(ReferenceMatch),
    Date {
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        /// `terms::ANY`, `system|code` or `|code`.
        qualifier: String,
    },
    Uri {
        mode: UriMode,
        uri: String,
    },
    /// One predicate per component, in definition order.
    Composite(Vec<ValuePredicate>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceMatch {
    /// A resource on this server: `Type/id`, or any type with this id.
    Local {
        resource_type: Option<String>,
        id: String,
    },
    /// An absolute URL or canonical, as written.
    Url(String),
    /// `:identifier`
    Identifier { system: SystemMatch, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Exact,
    Below,
    Above,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// Any of `values` matches a value of the parameter (`negated`: none does — `:not`).
    Values {
        code: String,
        param_type: ParamType,
        values: Vec<ValuePredicate>,
        negated: bool,
    },
    Missing {
        code: String,
        missing: bool,
    },
    /// `_text` / `_content`: all words appear.
    FullText {
        narrative_only: bool,
        text: String,
    },
    /// `subject:Patient.name=x`: the reference points at a resource matching `inner`.
    Chain {
        code: String,
        target_types: Vec<String>,
        inner: Box<Clause>,
    },
    /// `_has:Observation:patient:code=x`: some Observation whose `patient` refers here matches.
    Has {
        source_type: String,
        reference_code: String,
        inner: Box<Clause>,
    },
    /// `Patient/{id}/Observation`: the resource is in that patient's compartment.
    Compartment(String),
    /// In any of these compartments (`Patient/a`, `Patient/b`): the records of one person
    /// held by several trusts (`$everything`, `$summary`).
    AnyCompartment(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// Parameter code, or `_id` / `_lastUpdated`.
    pub code: String,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    /// Reference parameter code, or `*` for all.
    pub code: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Types searched (one for type-level search; several for `_type` at system level).
    pub resource_types: Vec<String>,
    pub clauses: Vec<Clause>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub total: TotalMode,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// Opaque paging position from a `next`/`previous` link.
    pub cursor: Option<String>,
    /// Parameters ignored under `Prefer: handling=lenient`, reported back.
    pub warnings: Vec<Issue>,
    /// The parameters as received (minus paging), to rebuild links.
    pub echo: Vec<(String, String)>,
}

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub parameter: String,
    pub message: String,
    pub not_supported: bool,
}

impl QueryError {
    fn new(parameter: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            parameter: parameter.to_string(),
            message: message.into(),
            not_supported: false,
        }
    }

    fn unsupported(parameter: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            not_supported: true,
            ..QueryError::new(parameter, message)
        }
    }

    pub fn issue(&self) -> Issue {
        Issue::error(
            if self.not_supported {
                IssueType::NotSupported
            } else {
                IssueType::Invalid
            },
            format!("search parameter '{}': {}", self.parameter, self.message),
        )
    }
}

/// Splits on unescaped commas; escapes stay in the parts for later splitting and `unescape`.
pub fn split_or(value: &str) -> Vec<String> {
    split_unescaped(value, ',')
}

fn split_unescaped(value: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(n) = chars.next() {
                current.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    out.push(current);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(n) = chars.next()
        {
            out.push(n);
        } else {
            out.push(c);
        }
    }
    out
}

/// `system|code` split on the first unescaped `|`.
fn split_pipe(value: &str) -> (Option<String>, String) {
    let parts = split_unescaped(value, '|');
    if parts.len() == 1 {
        (None, unescape(&parts[0]))
    } else {
        (Some(unescape(&parts[0])), unescape(&parts[1..].join("|")))
    }
}

fn parse_number(param: &str, s: &str) -> Result<(f64, f64, f64), QueryError> {
    let n: serde_json::Number = s
        .parse()
        .map_err(|_| QueryError::new(param, format!("'{s}' is not a number")))?;
    super::normalise::number_range(&n)
        .ok_or_else(|| QueryError::new(param, format!("'{s}' is not a number")))
}

fn parse_value(
    param: &SearchParam,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
) -> Result<ValuePredicate, QueryError> {
    let bad_modifier = || {
        QueryError::new(
            name,
            format!(
                "modifier ':{}' does not apply to a {} parameter",
                modifier.unwrap_or(""),
                param.param_type.code()
            ),
        )
    };
    Ok(match param.param_type {
        ParamType::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("contains") => StringMode::Contains,
                Some("exact") => StringMode::Exact,
                Some(_) => return Err(bad_modifier()),
            };
            let text = unescape(raw);
            ValuePredicate::String {
                mode,
                text: if mode == StringMode::Exact {
                    text
                } else {
                    fold_string(&text)
                },
            }
        }
        ParamType::Token => match modifier {
            None | Some("not") => {
                let (system, code) = split_pipe(raw);
                match system {
                    None => ValuePredicate::Token {
                        system: SystemMatch::Any,
                        code: Some(code),
                    },
                    Some(s) if s.is_empty() => ValuePredicate::Token {
                        system: SystemMatch::None,
                        code: Some(code),
                    },
                    Some(s) => ValuePredicate::Token {
                        system: SystemMatch::Is(s),
                        code: (!code.is_empty()).then_some(code),
                    },
                }
            }
            Some("text") => ValuePredicate::TokenText(fold_string(&unescape(raw))),
            Some("of-type") => {
                let parts = split_unescaped(raw, '|');
                if parts.len() != 3 {
                    return Err(QueryError::new(
                        name,
                        "':of-type' takes type-system|type-code|value",
                    ));
                }
                ValuePredicate::OfType {
                    type_system: unescape(&parts[0]),
                    type_code: unescape(&parts[1]),
                    value: unescape(&parts[2]),
                }
            }
            Some(m @ ("in" | "not-in" | "below" | "above")) => {
                return Err(QueryError::unsupported(
                    name,
                    format!("':{m}' needs a terminology server, which shcr does not have"),
                ));
            }
            Some(_) => return Err(bad_modifier()),
        },
        ParamType::Reference => {
            let value = unescape(raw);
            match modifier {
                Some("identifier") => {
                    let (system, v) = split_pipe(raw);
                    ValuePredicate::Reference(ReferenceMatch::Identifier {
                        system: match system {
                            None => SystemMatch::Any,
                            Some(s) if s.is_empty() => SystemMatch::None,
                            Some(s) => SystemMatch::Is(s),
                        },
                        value: v,
                    })
                }
                None => reference_value(param, &value, None, name)?,
                Some(t) if crate::validation::is_resource_type(t) => {
                    reference_value(param, &value, Some(t), name)?
                }
                Some(_) => return Err(bad_modifier()),
            }
        }
        ParamType::Date => {
            if modifier.is_some() {
                return Err(bad_modifier());
            }
            let (prefix, rest) = Prefix::split(raw);
            let (low, high) = date_range(rest).ok_or_else(|| {
                QueryError::new(
                    name,
                    format!("'{rest}' is not a FHIR date, dateTime or instant"),
                )
            })?;
            ValuePredicate::Date { prefix, low, high }
        }
        ParamType::Number => {
            if modifier.is_some() {
                return Err(bad_modifier());
            }
            let (prefix, rest) = Prefix::split(raw);
            let (value, low, high) = parse_number(name, rest)?;
            ValuePredicate::Number {
                prefix,
                value,
                low,
                high,
            }
        }
        ParamType::Quantity => {
            if modifier.is_some() {
                return Err(bad_modifier());
            }
            let (prefix, rest) = Prefix::split(raw);
            let parts = split_unescaped(rest, '|');
            let (value, low, high) = parse_number(name, &parts[0])?;
            let qualifier = match parts.len() {
                1 => super::terms::any().to_string(),
                3 => {
                    let (system, code) = (unescape(&parts[1]), unescape(&parts[2]));
                    if code.is_empty() {
                        super::terms::any().to_string()
                    } else {
                        format!("{system}|{code}")
                    }
                }
                _ => {
                    return Err(QueryError::new(
                        name,
                        "a quantity is [prefix]value or [prefix]value|system|code",
                    ));
                }
            };
            ValuePredicate::Quantity {
                prefix,
                value,
                low,
                high,
                qualifier,
            }
        }
        ParamType::Uri => ValuePredicate::Uri {
            mode: match modifier {
                None => UriMode::Exact,
                Some("below") => UriMode::Below,
                Some("above") => UriMode::Above,
                Some(_) => return Err(bad_modifier()),
            },
            uri: unescape(raw),
        },
        ParamType::Composite => {
            if modifier.is_some() {
                return Err(bad_modifier());
            }
            let parts = split_unescaped(raw, '$');
            if parts.len() != param.components.len() {
                return Err(QueryError::new(
                    name,
                    format!(
                        "a composite value has {} parts separated by '$'",
                        param.components.len()
                    ),
                ));
            }
            let mut components = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                let component_type = param.component_type(i).ok_or_else(|| {
                    QueryError::unsupported(name, "component definition not loaded")
                })?;
                let mut component = param.clone();
                component.param_type = component_type;
                component.components.clear();
                components.push(parse_value(&component, name, None, part)?);
            }
            ValuePredicate::Composite(components)
        }
        ParamType::Special => {
            return Err(QueryError::unsupported(
                name,
                "special parameters (such as near) are not supported",
            ));
        }
    })
}

fn reference_value(
    param: &SearchParam,
    value: &str,
    type_modifier: Option<&str>,
    name: &str,
) -> Result<ValuePredicate, QueryError> {
    if value.starts_with("http://") || value.starts_with("https://") || value.starts_with("urn:") {
        return Ok(ValuePredicate::Reference(ReferenceMatch::Url(
            value.to_string(),
        )));
    }
    let (t, id) = match value.split_once('/') {
        Some((t, id)) => (Some(t.to_string()), id.to_string()),
        None => (type_modifier.map(str::to_string), value.to_string()),
    };
    if let (Some(t), Some(m)) = (&t, type_modifier)
        && t != m
    {
        return Err(QueryError::new(
            name,
            format!("'{value}' is not a {m} reference"),
        ));
    }
    if let Some(t) = &t
        && !param.targets.is_empty()
        && !param.targets.iter().any(|x| x == t)
    {
        return Err(QueryError::new(
            name,
            format!("'{}' cannot refer to a {t}", param.code),
        ));
    }
    if !crate::fhir::id::is_valid_id(&id) {
        return Err(QueryError::new(name, format!("'{id}' is not a valid id")));
    }
    Ok(ValuePredicate::Reference(ReferenceMatch::Local {
        resource_type: t,
        id,
    }))
}

fn param_for<'r>(registry: &'r Registry, types: &[String], code: &str) -> Option<&'r SearchParam> {
    let first = registry.get(types.first()?, code)?;
    types
        .iter()
        .all(|t| registry.get(t, code).is_some())
        .then_some(first)
}

/// Parses one `name=value` into a clause against `types`.
fn parse_clause(
    registry: &Registry,
    types: &[String],
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Clause, QueryError> {
    if depth > 3 {
        return Err(QueryError::unsupported(
            name,
            "chains deeper than three levels",
        ));
    }
    if value.is_empty() {
        return Err(QueryError::new(name, "has no value"));
    }
    if name == "_text" || name == "_content" {
        return Ok(Clause::FullText {
            narrative_only: name == "_text",
            text: fold_string(value),
        });
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let parts: Vec<&str> = rest.splitn(3, ':').collect();
        let [source_type, reference_code, inner_name] = parts.as_slice() else {
            return Err(QueryError::new(
                name,
                "_has takes _has:Type:reference-parameter:parameter",
            ));
        };
        if !crate::validation::is_resource_type(source_type) {
            return Err(QueryError::new(
                name,
                format!("'{source_type}' is not a resource type"),
            ));
        }
        let source = vec![source_type.to_string()];
        let reference = param_for(registry, &source, reference_code).ok_or_else(|| {
            QueryError::new(
                name,
                format!("{source_type} has no search parameter '{reference_code}'"),
            )
        })?;
        if reference.param_type != ParamType::Reference {
            return Err(QueryError::new(
                name,
                format!("'{reference_code}' is not a reference parameter"),
            ));
        }
        let inner = parse_clause(registry, &source, inner_name, value, depth + 1)?;
        return Ok(Clause::Has {
            source_type: source_type.to_string(),
            reference_code: reference_code.to_string(),
            inner: Box::new(inner),
        });
    }
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_modifier) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let param = param_for(registry, types, code)
            .ok_or_else(|| QueryError::new(name, format!("unknown search parameter '{code}'")))?;
        if param.param_type != ParamType::Reference {
            return Err(QueryError::new(
                name,
                format!("'{code}' is not a reference parameter, so it cannot be chained"),
            ));
        }
        let target_types: Vec<String> = match type_modifier {
            Some(t) => {
                if !param.targets.is_empty() && !param.targets.iter().any(|x| x == t) {
                    return Err(QueryError::new(
                        name,
                        format!("'{code}' cannot refer to a {t}"),
                    ));
                }
                vec![t.to_string()]
            }
            None => {
                let inner_code = rest.split([':', '.']).next().unwrap_or(rest);
                let candidates: Vec<String> = param
                    .targets
                    .iter()
                    .filter(|t| registry.get(t, inner_code).is_some())
                    .cloned()
                    .collect();
                match candidates.len() {
                    0 => {
                        return Err(QueryError::new(
                            name,
                            format!(
                                "no resource type '{code}' refers to has a parameter '{inner_code}'"
                            ),
                        ));
                    }
                    1 => candidates,
                    _ => {
                        return Err(QueryError::new(
                            name,
                            format!(
                                "'{code}' may refer to {}; name one, e.g. {code}:{}.{rest}",
                                candidates.join(", "),
                                candidates[0]
                            ),
                        ));
                    }
                }
            }
        };
        let inner = parse_clause(registry, &target_types, rest, value, depth + 1)?;
        return Ok(Clause::Chain {
            code: code.to_string(),
            target_types,
            inner: Box::new(inner),
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let param = param_for(registry, types, code).ok_or_else(|| {
        QueryError::new(
            name,
            format!("unknown search parameter '{code}' for {}", types.join(", ")),
        )
    })?;
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(QueryError::new(name, ":missing takes true or false")),
        };
        return Ok(Clause::Missing {
            code: code.to_string(),
            missing,
        });
    }
    let negated = modifier == Some("not");
    if negated && param.param_type != ParamType::Token {
        return Err(QueryError::new(name, "':not' applies to token parameters"));
    }
    let values = split_or(value)
        .iter()
        .map(|v| parse_value(param, name, modifier, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Clause::Values {
        code: code.to_string(),
        param_type: param.param_type,
        values,
        negated,
    })
}

fn parse_include(registry: &Registry, name: &str, value: &str) -> Result<Include, QueryError> {
    let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
    if value == "*" {
        return Ok(Include {
            source_type: "*".into(),
            code: "*".into(),
            target_type: None,
            iterate,
        });
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source_type, code, target_type) = match parts.as_slice() {
        [t, c] => (*t, *c, None),
        [t, c, target] => (*t, *c, Some(target.to_string())),
        _ => {
            return Err(QueryError::new(
                name,
                format!("'{value}' is not Type:parameter[:targetType]"),
            ));
        }
    };
    if !crate::validation::is_resource_type(source_type) {
        return Err(QueryError::new(
            name,
            format!("'{source_type}' is not a resource type"),
        ));
    }
    if code != "*" {
        let param = registry.get(source_type, code).ok_or_else(|| {
            QueryError::new(
                name,
                format!("{source_type} has no search parameter '{code}'"),
            )
        })?;
        if param.param_type != ParamType::Reference {
            return Err(QueryError::new(
                name,
                format!("'{code}' is not a reference parameter"),
            ));
        }
    }
    Ok(Include {
        source_type: source_type.to_string(),
        code: code.to_string(),
        target_type,
        iterate,
    })
}

/// Parses a search request for `types`. With `lenient`, unknown or malformed parameters are
/// dropped and reported in `warnings` instead of failing the search.
pub fn parse(
    registry: &Registry,
    types: Vec<String>,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<SearchQuery, QueryError> {
    let mut q = SearchQuery {
        resource_types: types,
        clauses: Vec::new(),
        sort: Vec::new(),
        count: DEFAULT_COUNT,
        total: TotalMode::Accurate,
        summary: Summary::False,
        elements: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        cursor: None,
        warnings: Vec::new(),
        echo: Vec::new(),
    };
    for (name, value) in pairs {
        if name != "_cursor" && name != "_format" && name != "_pretty" {
            q.echo.push((name.clone(), value.clone()));
        }
        let result = parse_one(registry, &mut q, name, value);
        if let Err(e) = result {
            if lenient {
                let mut issue = e.issue();
                issue.severity = crate::fhir::outcome::Severity::Warning;
                issue.diagnostics = format!("{} (ignored)", issue.diagnostics);
                q.warnings.push(issue);
                q.echo.retain(|(n, v)| !(n == name && v == value));
            } else {
                return Err(e);
            }
        }
    }
    Ok(q)
}

fn parse_one(
    registry: &Registry,
    q: &mut SearchQuery,
    name: &str,
    value: &str,
) -> Result<(), QueryError> {
    let base = name.split(':').next().unwrap_or(name);
    match base {
        "_count" => {
            q.count = value
                .parse::<usize>()
                .map_err(|_| QueryError::new(name, "must be a non-negative integer"))?
                .min(MAX_COUNT);
        }
        "_sort" => {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (code, descending) = match key.strip_prefix('-') {
                    Some(c) => (c, true),
                    None => (key, false),
                };
                let known = param_for(registry, &q.resource_types, code).is_some();
                if !known {
                    return Err(QueryError::new(
                        name,
                        format!("cannot sort by unknown parameter '{code}'"),
                    ));
                }
                q.sort.push(SortKey {
                    code: code.to_string(),
                    descending,
                });
            }
        }
        "_total" => {
            q.total = match value {
                "none" => TotalMode::None,
                "estimate" => TotalMode::Estimate,
                "accurate" => TotalMode::Accurate,
                _ => return Err(QueryError::new(name, "takes none, estimate or accurate")),
            }
        }
        "_summary" => {
            q.summary = match value {
                "true" => Summary::True,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "count" => Summary::Count,
                "false" => Summary::False,
                _ => {
                    return Err(QueryError::new(
                        name,
                        "takes true, text, data, count or false",
                    ));
                }
            }
        }
        "_elements" => {
            q.elements = value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
        }
        "_include" => q.includes.push(parse_include(registry, name, value)?),
        "_revinclude" => q.revincludes.push(parse_include(registry, name, value)?),
        "_cursor" => q.cursor = Some(value.to_string()),
        "_format" | "_pretty" | "_type" => {}
        "_contained" | "_containedType" | "_list" | "_query" | "_filter" => {
            return Err(QueryError::unsupported(
                name,
                "is not supported by this server",
            ));
        }
        _ => {
            let clause = parse_clause(registry, &q.resource_types, name, value, 0)?;
            q.clauses.push(clause);
        }
    }
    Ok(())
}
