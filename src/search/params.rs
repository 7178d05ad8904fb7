//! SearchParameter definitions, as data: the registry of what can be searched on each resource
//! type and how each parameter's values are found.
//!
//! Sources, in order (a later definition overrides an earlier one with the same `url`, and for
//! each of its bases, one with the same `(base, code)`):
//! 1. the files shipped in `search-params/`, embedded at build time (`r4-core.json`, the
//!    official R4 4.0.1 set; `uk-core.json`);
//! 2. every `*.json` file of an optional runtime folder, in file-name order, so an operator can
//!    add or replace a parameter without a new build.
//!
//! Each file is a Bundle of SearchParameter resources or a single SearchParameter.
//!
//! A parameter whose expression cannot be used (outside the supported FHIRPath subset, naming
//! an element its base does not have, a composite whose component definition is unknown) is
//! left out of the registry, so a search on it is refused as unknown rather than silently
//! matching nothing, and is listed in [`Registry::unsupported`] for start-up to log or fail on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fhirpath::model::MODEL;
use super::fhirpath::{Expression, FhirType, StaticTypes, compile};

/// The files shipped in `search-params/`, embedded in the binary.
const SHIPPED: [(&str, &str); 2] = [
    (
        "r4-core.json",
        include_str!("../../search-params/r4-core.json"),
    ),
    (
        "uk-core.json",
        include_str!("../../search-params/uk-core.json"),
    ),
];

/// Parameters every resource has, that are not found by evaluating an expression: `_text` and
/// `_content` come from [`text_content`](super::extract::text_content); `_query` names a
/// named query rather than a value.
const WITHOUT_EXPRESSION: [&str; 3] = ["_text", "_content", "_query"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn from_code(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    /// The R4 `search-param-type` code.
    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One SearchParameter definition.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    /// The resource types it applies to, as declared (`Resource` / `DomainResource` for the
    /// common parameters).
    pub base: Vec<String>,
    pub param_type: ParamType,
    /// The compiled expression as declared, over all its bases. `None` only for `_text`,
    /// `_content` and `_query`.
    pub expression: Option<Expression>,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// Composite parameters: each component's definition url and expression (relative to each
    /// item the parameter's own expression selects), in definition order.
    pub components: Vec<(String, Expression)>,
    /// Component types, parallel to `components`, from the component definitions.
    component_types: Vec<ParamType>,
    pub modifiers: Vec<String>,
    pub comparators: Vec<String>,
    /// Names allowed after this parameter in a chain (`subject:Patient.name`); empty: any.
    pub chains: Vec<String>,
    pub multiple_or: Option<bool>,
    pub multiple_and: Option<bool>,
    pub description: String,
    /// The file it was loaded from (`r4-core.json`, or a path in the runtime folder).
    pub source: String,
}

impl SearchParam {
    /// The type of the `i`th component of a composite parameter.
    pub fn component_type(&self, i: usize) -> Option<ParamType> {
        self.component_types.get(i).copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read search parameters from {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("search parameter file {file} is not valid JSON: {source}")]
    Json {
        file: String,
        source: serde_json::Error,
    },
    #[error("search parameter file {file}: {message}")]
    Invalid { file: String, message: String },
}

/// A parameter as it applies to one resource type: the expression keeps only the branches
/// that can match that type, so a union over thirty resource types costs one branch.
#[derive(Debug)]
pub(crate) struct Bound {
    pub param: usize,
    pub expression: Option<Expression>,
}

#[derive(Debug, Default)]
struct TypeParams {
    /// Sorted by code.
    bound: Vec<Bound>,
    by_code: HashMap<String, usize>,
}

/// The search parameters of every resource type.
#[derive(Debug)]
pub struct Registry {
    params: Vec<SearchParam>,
    /// Whether a parameter applies to at least one resource type; the others are unsupported.
    usable: Vec<bool>,
    by_url: HashMap<String, usize>,
    by_type: HashMap<String, TypeParams>,
    unsupported: Vec<(String, String)>,
}

impl Registry {
    /// Loads the shipped definitions, then every `*.json` in `dir` (if given).
    pub fn load(dir: Option<&Path>) -> Result<Registry, RegistryError> {
        let mut sources: Vec<(String, String)> = SHIPPED
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect();
        if let Some(dir) = dir {
            let io = |source| RegistryError::Io {
                path: dir.to_path_buf(),
                source,
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io)?;
            files.retain(|p| p.extension().is_some_and(|e| e == "json") && p.is_file());
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path).map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
                sources.push((path.display().to_string(), text));
            }
        }
        Self::from_sources(&sources)
    }

    fn from_sources(sources: &[(String, String)]) -> Result<Registry, RegistryError> {
        // Raw definitions in override order: a later one with the same url replaces the
        // earlier one and takes its own place in the order.
        let mut raw: Vec<Option<RawParam>> = Vec::new();
        let mut raw_by_url: HashMap<String, usize> = HashMap::new();
        for (file, text) in sources {
            let json: Value = serde_json::from_str(text).map_err(|source| RegistryError::Json {
                file: file.clone(),
                source,
            })?;
            for p in search_parameters(file, &json)? {
                if let Some(old) = raw_by_url.insert(p.url.clone(), raw.len()) {
                    raw[old] = None;
                }
                raw.push(Some(p));
            }
        }

        let mut unsupported = Vec::new();
        let mut params = Vec::new();
        for p in raw.into_iter().flatten() {
            match p.build() {
                Ok(param) => params.push(param),
                Err(why) => unsupported.push((p.url, why)),
            }
        }
        let by_url: HashMap<String, usize> = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.url.clone(), i))
            .collect();

        // Component types come from their definitions, which may be anywhere in the set.
        let mut broken = vec![false; params.len()];
        for i in 0..params.len() {
            let mut types = Vec::new();
            for (definition, _) in &params[i].components {
                match by_url.get(definition) {
                    Some(&c) => types.push(params[c].param_type),
                    None => {
                        unsupported.push((
                            params[i].url.clone(),
                            format!("component definition {definition} is not loaded"),
                        ));
                        broken[i] = true;
                    }
                }
            }
            params[i].component_types = types;
        }

        // (base, code) → parameter; later definitions win.
        let mut by_base: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            if broken[i] {
                continue;
            }
            for base in &p.base {
                by_base.insert((base.as_str(), p.code.as_str()), i);
            }
        }
        let mut per_base: HashMap<&str, Vec<usize>> = HashMap::new();
        for (&(base, _), &i) in &by_base {
            per_base.entry(base).or_default().push(i);
        }
        for base in per_base.keys() {
            if FhirType::named(base).is_none() {
                for &i in &per_base[base] {
                    unsupported.push((
                        params[i].url.clone(),
                        format!("base {base} is not an R4 resource type"),
                    ));
                }
            }
        }

        let mut usable = vec![false; params.len()];
        let mut by_type: HashMap<String, TypeParams> = HashMap::new();
        let concrete = crate::validation::resource_types().map(|t| (t, true));
        let abstracts = [("Resource", false), ("DomainResource", false)];
        for (type_name, is_concrete) in concrete.chain(abstracts) {
            let t = FhirType::named(type_name).expect("R4 type");
            let mut codes: HashMap<&str, usize> = HashMap::new();
            // Common parameters first, so a type's own definition of a code overrides them.
            for base in ["Resource", "DomainResource", type_name] {
                let inherited = match base {
                    "Resource" => MODEL.is_a(t, MODEL.resource),
                    "DomainResource" => MODEL.is_a(t, MODEL.domain_resource),
                    _ => true,
                };
                if !inherited {
                    continue;
                }
                for &i in per_base.get(base).into_iter().flatten() {
                    codes.insert(params[i].code.as_str(), i);
                }
            }
            let mut entry = TypeParams::default();
            let mut codes: Vec<(&str, usize)> = codes.into_iter().collect();
            codes.sort();
            for (code, i) in codes {
                let p = &params[i];
                let expression = if is_concrete {
                    match bind(p, type_name) {
                        Ok(e) => e,
                        Err(why) => {
                            unsupported.push((p.url.clone(), format!("on {type_name}: {why}")));
                            continue;
                        }
                    }
                } else {
                    p.expression.clone()
                };
                usable[i] = true;
                entry.by_code.insert(code.to_string(), entry.bound.len());
                entry.bound.push(Bound {
                    param: i,
                    expression,
                });
            }
            by_type.insert(type_name.to_string(), entry);
        }

        unsupported.sort();
        unsupported.dedup();
        Ok(Registry {
            params,
            usable,
            by_url,
            by_type,
            unsupported,
        })
    }

    /// Every parameter that applies to `resource_type` (its own, and the `Resource` /
    /// `DomainResource` ones it inherits), sorted by code.
    pub fn params_for(&self, resource_type: &str) -> impl Iterator<Item = &SearchParam> {
        self.bound_for(resource_type)
            .iter()
            .map(|b| &self.params[b.param])
    }

    pub(crate) fn param(&self, i: usize) -> &SearchParam {
        &self.params[i]
    }

    pub(crate) fn bound_for(&self, resource_type: &str) -> &[Bound] {
        self.by_type
            .get(resource_type)
            .map_or(&[][..], |t| &t.bound[..])
    }

    /// The parameter `code` on `resource_type` (including the inherited common ones:
    /// `get("Patient", "_id")`).
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        let t = self.by_type.get(resource_type)?;
        let &i = t.by_code.get(code)?;
        Some(&self.params[t.bound[i].param])
    }

    /// Every loaded parameter, once each, in load order: what an index schema built from the
    /// definitions iterates over.
    pub fn params(&self) -> impl Iterator<Item = &SearchParam> {
        self.params
            .iter()
            .zip(&self.usable)
            .filter_map(|(p, &usable)| usable.then_some(p))
    }

    /// A parameter by its canonical url (as composite components refer to them).
    pub fn by_url(&self, url: &str) -> Option<&SearchParam> {
        let &i = self.by_url.get(url)?;
        self.usable[i].then(|| &self.params[i])
    }

    /// Definitions left out, each with its url and the reason. A definition that fails on only
    /// some of its bases is listed once per failing base and kept for the others.
    pub fn unsupported(&self) -> &[(String, String)] {
        &self.unsupported
    }
}

/// The expression of `p` as it applies to `resource_type`, checked against the R4 model.
fn bind(p: &SearchParam, resource_type: &str) -> Result<Option<Expression>, String> {
    let Some(expression) = &p.expression else {
        return Ok(None);
    };
    let bound = expression
        .for_resource_type(resource_type)
        .ok_or_else(|| format!("no part of '{}' applies", expression.source()))?;
    let context = StaticTypes::of(resource_type).ok_or("not an R4 type")?;
    let selected = bound
        .check(&context, resource_type)
        .map_err(|e| e.to_string())?;
    for (definition, component) in &p.components {
        component
            .check(&selected, resource_type)
            .map_err(|e| format!("component {definition}: {e}"))?;
    }
    Ok(Some(bound))
}

/// The SearchParameter fields the registry uses, before compiling.
struct RawParam {
    file: String,
    url: String,
    code: String,
    base: Vec<String>,
    type_code: String,
    expression: Option<String>,
    targets: Vec<String>,
    components: Vec<(String, String)>,
    modifiers: Vec<String>,
    comparators: Vec<String>,
    chains: Vec<String>,
    multiple_or: Option<bool>,
    multiple_and: Option<bool>,
    description: String,
}

impl RawParam {
    fn build(&self) -> Result<SearchParam, String> {
        let param_type = ParamType::from_code(&self.type_code)
            .ok_or_else(|| format!("unknown search parameter type '{}'", self.type_code))?;
        let expression = match &self.expression {
            Some(e) => Some(compile(e).map_err(|err| format!("'{e}': {err}"))?),
            None if WITHOUT_EXPRESSION.contains(&self.code.as_str()) => None,
            None => return Err("no expression".into()),
        };
        if param_type == ParamType::Composite && self.components.is_empty() {
            return Err("composite without components".into());
        }
        let components = self
            .components
            .iter()
            .map(|(definition, e)| {
                compile(e)
                    .map(|c| (definition.clone(), c))
                    .map_err(|err| format!("component '{e}': {err}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(SearchParam {
            code: self.code.clone(),
            url: self.url.clone(),
            base: self.base.clone(),
            param_type,
            expression,
            targets: self.targets.clone(),
            components,
            component_types: Vec::new(),
            modifiers: self.modifiers.clone(),
            comparators: self.comparators.clone(),
            chains: self.chains.clone(),
            multiple_or: self.multiple_or,
            multiple_and: self.multiple_and,
            description: self.description.clone(),
            source: self.file.clone(),
        })
    }
}

fn search_parameters(file: &str, json: &Value) -> Result<Vec<RawParam>, RegistryError> {
    let invalid = |message: String| RegistryError::Invalid {
        file: file.to_string(),
        message,
    };
    match json.get("resourceType").and_then(Value::as_str) {
        Some("SearchParameter") => Ok(vec![raw_param(file, json).map_err(invalid)?]),
        Some("Bundle") => {
            let entries = match json.get("entry") {
                None => return Ok(Vec::new()),
                Some(Value::Array(entries)) => entries,
                Some(_) => return Err(invalid("Bundle.entry is not an array".into())),
            };
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let r = e
                        .get("resource")
                        .filter(|r| r["resourceType"] == "SearchParameter")
                        .ok_or_else(|| format!("entry {i} is not a SearchParameter"))?;
                    raw_param(file, r).map_err(|m| format!("entry {i}: {m}"))
                })
                .collect::<Result<_, _>>()
                .map_err(invalid)
        }
        _ => Err(invalid(
            "expected a Bundle of SearchParameters or a SearchParameter".into(),
        )),
    }
}

fn raw_param(file: &str, r: &Value) -> Result<RawParam, String> {
    let string = |key: &str| r.get(key).and_then(Value::as_str).map(str::to_string);
    let strings = |key: &str| -> Vec<String> {
        r.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let url = string("url").ok_or("no url")?;
    let code = string("code").ok_or_else(|| format!("{url}: no code"))?;
    let base = strings("base");
    if base.is_empty() {
        return Err(format!("{url}: no base"));
    }
    let type_code = string("type").ok_or_else(|| format!("{url}: no type"))?;
    let components = r
        .get("component")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let field = |k: &str| {
                        c.get(k)
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| format!("{url}: component without {k}"))
                    };
                    Ok((field("definition")?, field("expression")?))
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(RawParam {
        file: file.to_string(),
        expression: string("expression").filter(|e| !e.trim().is_empty()),
        targets: strings("target"),
        components,
        modifiers: strings("modifier"),
        comparators: strings("comparator"),
        chains: strings("chain"),
        multiple_or: r.get("multipleOr").and_then(Value::as_bool),
        multiple_and: r.get("multipleAnd").and_then(Value::as_bool),
        description: string("description").unwrap_or_default(),
        url,
        code,
        base,
        type_code,
    })
}
