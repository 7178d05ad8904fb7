//! Static checking of an expression against the R4 model.
//!
//! Evaluation is forgiving (a misspelt element just selects nothing), which would let a broken
//! SearchParameter index nothing without anyone noticing. Walking the expression over the
//! possible types at each step catches that at start-up, for the shipped definitions and for
//! any an operator adds.

use super::FhirPathError;
use super::model::{FhirType, MODEL, TypeRef};
use super::parser::{Expr, Func, TypeSpec};

/// The types a collection may hold at some point of an expression.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticTypes {
    types: Vec<FhirType>,
    /// Could be anything (a `Resource` element, the result of `resolve()`): steps are not
    /// checked past this point.
    any: bool,
}

impl StaticTypes {
    /// A single named type.
    pub fn of(name: &str) -> Option<StaticTypes> {
        FhirType::named(name).map(StaticTypes::one)
    }

    fn one(t: FhirType) -> StaticTypes {
        StaticTypes {
            types: vec![t],
            any: false,
        }
    }

    fn any() -> StaticTypes {
        StaticTypes {
            types: Vec::new(),
            any: true,
        }
    }

    fn add(&mut self, t: FhirType) {
        if !self.types.contains(&t) {
            self.types.push(t);
        }
    }

    fn merge(&mut self, other: StaticTypes) {
        self.any |= other.any;
        for t in other.types {
            self.add(t);
        }
    }

    pub fn types(&self) -> impl Iterator<Item = FhirType> + '_ {
        self.types.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && !self.any
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
        names.join(" | ")
    }
}

pub(crate) fn check_expression(
    e: &Expr,
    focus: &StaticTypes,
    root: &StaticTypes,
) -> Result<StaticTypes, FhirPathError> {
    let mut errors = Vec::new();
    let result = Checker {
        root,
        errors: &mut errors,
    }
    .check(e, focus);
    if errors.is_empty() {
        Ok(result)
    } else {
        Err(FhirPathError::Model(errors.join("; ")))
    }
}

struct Checker<'c> {
    root: &'c StaticTypes,
    errors: &'c mut Vec<String>,
}

impl Checker<'_> {
    fn boolean() -> StaticTypes {
        StaticTypes::one(MODEL.boolean)
    }

    fn check(&mut self, e: &Expr, focus: &StaticTypes) -> StaticTypes {
        match e {
            Expr::This => focus.clone(),
            Expr::Resource => self.root.clone(),
            Expr::TypeFilter(TypeSpec(t)) => {
                if focus.any {
                    return StaticTypes::one(*t);
                }
                let kept = StaticTypes {
                    types: focus.types().filter(|f| MODEL.is_a(*f, *t)).collect(),
                    any: false,
                };
                if kept.is_empty() && !focus.is_empty() {
                    self.errors.push(format!(
                        "a path on {} applied to {}",
                        t.name(),
                        focus.names()
                    ));
                }
                kept
            }
            Expr::Bool(_) => Self::boolean(),
            Expr::Str(_) => StaticTypes::one(MODEL.string),
            Expr::Num(_) => StaticTypes::one(MODEL.decimal),
            Expr::Empty => StaticTypes::default(),
            Expr::Child(target, name) => {
                let input = self.check(target, focus);
                self.child(&input, name)
            }
            Expr::Call(target, func) => {
                let input = self.check(target, focus);
                self.call(func, &input)
            }
            Expr::Index(target, index) => {
                self.check(index, focus);
                self.check(target, focus)
            }
            Expr::Union(branches) => {
                let mut all = StaticTypes::default();
                for b in branches {
                    let t = self.check(b, focus);
                    all.merge(t);
                }
                all
            }
            Expr::Binary(_, l, r) => {
                self.check(l, focus);
                self.check(r, focus);
                Self::boolean()
            }
            Expr::Is(target, _) => {
                self.check(target, focus);
                Self::boolean()
            }
            Expr::As(target, TypeSpec(t)) => {
                let input = self.check(target, focus);
                self.cast(&input, *t)
            }
        }
    }

    fn child(&mut self, input: &StaticTypes, name: &str) -> StaticTypes {
        if input.any {
            return StaticTypes::any();
        }
        let mut out = StaticTypes::default();
        let mut found = false;
        for t in input.types() {
            if let Some(el) = MODEL.element(t, name) {
                found = true;
                for (_, tr) in &el.variants {
                    match tr {
                        TypeRef::Type(ty) => out.add(*ty),
                        TypeRef::AnyResource => out.any = true,
                    }
                }
            }
        }
        if !found && !input.is_empty() {
            self.errors
                .push(format!("no element '{name}' on {}", input.names()));
        }
        out
    }

    fn cast(&mut self, input: &StaticTypes, t: FhirType) -> StaticTypes {
        if input.any {
            return StaticTypes::one(t);
        }
        let kept = StaticTypes {
            types: input.types().filter(|f| MODEL.is_a(*f, t)).collect(),
            any: false,
        };
        if kept.is_empty() && !input.is_empty() {
            self.errors
                .push(format!("{} can never be a {}", input.names(), t.name()));
        }
        kept
    }

    fn call(&mut self, func: &Func, input: &StaticTypes) -> StaticTypes {
        match func {
            Func::Where(c) => {
                self.check(c, input);
                input.clone()
            }
            Func::Select(p) => self.check(p, input),
            Func::Exists(c) => {
                if let Some(c) = c {
                    self.check(c, input);
                }
                Self::boolean()
            }
            Func::All(c) => {
                self.check(c, input);
                Self::boolean()
            }
            Func::Empty | Func::Not | Func::HasValue => Self::boolean(),
            Func::Count => StaticTypes::one(MODEL.integer),
            Func::First | Func::Last | Func::Tail | Func::Single | Func::Distinct => input.clone(),
            Func::Skip(n) | Func::Take(n) => {
                self.check(n, input);
                input.clone()
            }
            Func::OfType(TypeSpec(t)) => self.cast(input, *t),
            Func::Extension(_) => StaticTypes::one(MODEL.extension),
            Func::Resolve => StaticTypes::any(),
        }
    }
}
