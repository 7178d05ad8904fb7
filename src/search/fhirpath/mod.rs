//! A synchronous FHIRPath evaluator for the subset SearchParameter expressions use.
//!
//! Expressions are compiled once ([`compile`]) and evaluated many times over resource JSON
//! ([`Expression::evaluate`]), on the ingest path, so evaluation neither allocates per element
//! nor copies JSON: results borrow from the resource.
//!
//! # Supported
//! Paths with a leading type name (`Patient.name.given`), unions of paths over several resource
//! types (only branches whose type matches the resource apply), parentheses, indexers,
//! `where`, `select`, `exists`, `all`, `empty`, `first`, `last`, `tail`, `single`, `skip`,
//! `take`, `not`, `count`, `hasValue`, `distinct`, `trace`, `ofType`/`as`/`is` (functions and
//! operators), `extension('url')`, `resolve()`, `=`, `!=`, `~`, `!~`, `<`, `>`, `<=`, `>=`,
//! `in`, `contains`, `and`, `or`, `xor`, `implies`, string/number/boolean literals, `{}`,
//! `$this`, `%resource`, `%rootResource`, `%context`.
//!
//! Choice elements are written with their FHIRPath name (`Observation.value`) and found under
//! whichever JSON name the resource uses (`valueQuantity`); `as`/`ofType`/`is` then select by
//! type. FHIRPath system type names read as the FHIR primitive that carries them
//! (`value.as(DateTime)` selects `valueDateTime`). Primitive extensions (`_birthDate`) are not
//! visited: search indexes values, not their extensions.
//!
//! `resolve()` does not reach the store: a contained target (`#id`) is found in the resource,
//! any other target is known only by the resource type its reference names (or
//! `Reference.type`), which is what `where(resolve() is Patient)` needs.
//!
//! # Not supported (compile errors naming the construct)
//! Arithmetic, string concatenation (`&`), date/time and quantity literals, environment
//! variables other than the above, and functions not listed.

mod check;
mod eval;
pub(crate) mod model;
mod parser;

use serde_json::Value;

pub use check::StaticTypes;
pub(crate) use eval::get as object_get;
pub use model::FhirType;
use model::MODEL;
use parser::Expr;

/// Why an expression cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirPathError {
    #[error("syntax error at offset {position}: {message}")]
    Syntax { position: usize, message: String },
    /// Valid FHIRPath outside the supported subset.
    #[error("unsupported FHIRPath: {0}")]
    Unsupported(String),
    #[error("unknown type {0}")]
    UnknownType(String),
    /// The expression does not fit the R4 model (an element that does not exist, a cast that
    /// can never succeed); found by [`Expression::check`].
    #[error("{0}")]
    Model(String),
}

/// One item of a result collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node<'a> {
    /// A value in the resource: an object (complex type, backbone element, resource) or a JSON
    /// primitive, with its FHIR type.
    Element { value: &'a Value, ty: FhirType },
    /// Computed: `exists()`, comparisons, `and`/`or`.
    Boolean(bool),
    /// A string literal of the expression.
    String(&'a str),
    /// A number literal or `count()`.
    Number(f64),
    /// What `resolve()` gives for a reference to a resource outside this one: only its type,
    /// when the reference names it.
    Resolved { resource_type: Option<&'a str> },
}

impl<'a> Node<'a> {
    /// A resource (top-level or inside another) typed by its `resourceType`.
    pub fn resource(value: &'a Value) -> Node<'a> {
        let ty = value
            .get("resourceType")
            .and_then(Value::as_str)
            .map_or(FhirType::UNKNOWN, |t| MODEL.resource_type(t));
        Node::Element { value, ty }
    }

    /// The FHIR type name (`Identifier`, `dateTime`, `Patient`); computed values report the
    /// FHIR primitive that would carry them.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Element { ty, .. } => ty.name(),
            Node::Boolean(_) => "boolean",
            Node::String(_) => "string",
            Node::Number(_) => "decimal",
            Node::Resolved { .. } => "Resource",
        }
    }

    /// The JSON value of an element.
    pub fn value(&self) -> Option<&'a Value> {
        match self {
            Node::Element { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A string: a JSON string element or a string literal.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Node::Element {
                value: Value::String(s),
                ..
            } => Some(s),
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_number(&self) -> Option<f64> {
        match self {
            Node::Element {
                value: Value::Number(n),
                ..
            } => n.as_f64(),
            Node::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Node::Element {
                value: Value::Bool(b),
                ..
            } => Some(*b),
            Node::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn is_a(&self, t: FhirType) -> bool {
        match *self {
            Node::Element { ty, .. } => MODEL.is_a(ty, t),
            Node::Boolean(_) => t == MODEL.boolean,
            Node::String(_) => t == MODEL.string,
            Node::Number(_) => t == MODEL.decimal || t == MODEL.integer,
            Node::Resolved { resource_type } => {
                resource_type.is_some_and(|rt| MODEL.is_a(MODEL.resource_type(rt), t))
            }
        }
    }

    /// Identity for `|` and `distinct()`: the same place in the resource, or equal values.
    fn same(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::Element { value: a, ty: s }, Node::Element { value: b, ty: t }) => {
                std::ptr::eq(*a, *b) && s == t
            }
            _ => self == other,
        }
    }

    /// FHIRPath `=` on single items: primitives by value, complex values structurally.
    fn equals(&self, other: &Node) -> bool {
        if let (Some(a), Some(b)) = (self.as_str(), other.as_str()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.as_number(), other.as_number()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.as_bool(), other.as_bool()) {
            return a == b;
        }
        match (self, other) {
            (Node::Element { value: a, .. }, Node::Element { value: b, .. }) => {
                a.is_object() && a == b
            }
            _ => false,
        }
    }

    /// FHIRPath `~`: strings ignoring case and surrounding/repeated whitespace.
    fn equivalent(&self, other: &Node) -> bool {
        if let (Some(a), Some(b)) = (self.as_str(), other.as_str()) {
            let mut x = a.split_whitespace();
            let mut y = b.split_whitespace();
            loop {
                match (x.next(), y.next()) {
                    (None, None) => return true,
                    (Some(p), Some(q)) if p.to_lowercase() == q.to_lowercase() => {}
                    _ => return false,
                }
            }
        }
        self.equals(other)
    }

    fn compare(&self, other: &Node) -> Option<std::cmp::Ordering> {
        if let (Some(a), Some(b)) = (self.as_str(), other.as_str()) {
            return Some(a.cmp(b));
        }
        if let (Some(a), Some(b)) = (self.as_number(), other.as_number()) {
            return a.partial_cmp(&b);
        }
        None
    }
}

/// A compiled FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    source: Box<str>,
    expr: Expr,
}

/// Parses an expression once for repeated evaluation.
pub fn compile(source: &str) -> Result<Expression, FhirPathError> {
    Ok(Expression {
        source: source.into(),
        expr: parser::parse(source)?,
    })
}

impl Expression {
    /// The text it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the resource as context (`Patient.name` on a Patient).
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Node<'a>> {
        let root = Node::resource(resource);
        self.evaluate_on(root, root)
    }

    /// Evaluates with `focus` as context and `root` (from [`Node::resource`]) as `%resource`:
    /// the components of a composite parameter are relative to each item its own expression
    /// selects. Evaluating many expressions over one resource this way also looks its type
    /// up once rather than per expression.
    pub fn evaluate_on<'a>(&'a self, focus: Node<'a>, root: Node<'a>) -> Vec<Node<'a>> {
        let Node::Element {
            value: resource, ..
        } = root
        else {
            return Vec::new();
        };
        let ev = eval::Eval { resource, root };
        let mut out = Vec::new();
        ev.eval(&self.expr, &[focus], &mut out);
        out
    }

    /// The part of this expression that can select anything in a resource of `resource_type`:
    /// the branches of a top-level union whose leading type does not match are dropped
    /// (`AllergyIntolerance.patient | CarePlan.subject…` keeps one branch for a CarePlan).
    /// `None` when nothing is left.
    pub fn for_resource_type(&self, resource_type: &str) -> Option<Expression> {
        let rt = FhirType::named(resource_type)?;
        let applies = |e: &Expr| leading_type(e).is_none_or(|t| MODEL.is_a(rt, t));
        let expr = match &self.expr {
            Expr::Union(branches) => {
                let mut kept: Vec<Expr> = Vec::new();
                flatten_union(branches, &mut |b| {
                    if applies(b) {
                        kept.push(b.clone());
                    }
                });
                match kept.len() {
                    0 => return None,
                    1 => kept.pop().expect("one branch"),
                    _ => Expr::Union(kept),
                }
            }
            e if applies(e) => e.clone(),
            _ => return None,
        };
        Some(Expression {
            source: self.source.clone(),
            expr,
        })
    }

    /// Checks the expression against the R4 model with `focus` as the context's possible types
    /// and `resource_type` as `%resource`: every element named must exist on the type it is
    /// applied to, and every cast must be able to succeed. Returns the result's possible types.
    pub fn check(
        &self,
        focus: &StaticTypes,
        resource_type: &str,
    ) -> Result<StaticTypes, FhirPathError> {
        let root = StaticTypes::of(resource_type)
            .ok_or_else(|| FhirPathError::UnknownType(resource_type.to_string()))?;
        check::check_expression(&self.expr, focus, &root)
    }
}

fn flatten_union<'e>(branches: &'e [Expr], f: &mut impl FnMut(&'e Expr)) {
    for b in branches {
        match b {
            Expr::Union(inner) => flatten_union(inner, f),
            b => f(b),
        }
    }
}

/// The type a path starts with (`Patient` in `Patient.name.where(use = 'official')`), if it
/// starts with one. Boolean operators are not looked through: `{} and false` is not empty.
fn leading_type(e: &Expr) -> Option<FhirType> {
    match e {
        Expr::TypeFilter(t) => Some(t.0),
        Expr::Child(target, _)
        | Expr::Call(target, _)
        | Expr::Index(target, _)
        | Expr::As(target, _)
        | Expr::Is(target, _) => leading_type(target),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
