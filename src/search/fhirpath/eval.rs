//! Evaluation of a compiled expression over resource JSON.
//!
//! Every node carries its FHIR type, taken from the R4 model as the path is walked, so a choice
//! element (`Observation.value`) is found under whichever JSON name it was written with
//! (`valueQuantity`), `as Quantity` can tell it from `valueString`, and the extraction layer
//! knows whether an object is an `Identifier` or a `ContactPoint` without guessing from its keys.

use serde_json::Value;

use super::Node;
use super::model::{FhirType, MODEL, TypeRef};
use super::parser::{BinOp, Expr, Func, TypeSpec};
use crate::search::normalise::{ReferenceTarget, parse_reference};

pub(crate) struct Eval<'a> {
    pub resource: &'a Value,
    pub root: Node<'a>,
}

impl<'a> Eval<'a> {
    /// Runs `f` over what `target` selects from `focus`. Every path starts with `$this` or
    /// a type filter that keeps the whole focus (`Patient.` on a Patient): those use the focus
    /// as it is, sparing a collection per parameter on the ingest path.
    fn with_input(
        &self,
        target: &'a Expr,
        focus: &[Node<'a>],
        f: impl FnOnce(&[Node<'a>], &mut Vec<Node<'a>>),
        out: &mut Vec<Node<'a>>,
    ) {
        let whole_focus = match target {
            Expr::This => true,
            Expr::TypeFilter(TypeSpec(t)) => focus.iter().all(|n| n.is_a(*t)),
            _ => false,
        };
        if whole_focus {
            f(focus, out);
        } else {
            let input = self.collect(target, focus);
            f(&input, out);
        }
    }

    fn collect(&self, e: &'a Expr, focus: &[Node<'a>]) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        self.eval(e, focus, &mut out);
        out
    }

    pub fn eval(&self, e: &'a Expr, focus: &[Node<'a>], out: &mut Vec<Node<'a>>) {
        match e {
            Expr::This => out.extend_from_slice(focus),
            Expr::Resource => out.push(self.root),
            Expr::TypeFilter(TypeSpec(t)) => {
                out.extend(focus.iter().filter(|n| n.is_a(*t)));
            }
            Expr::Bool(b) => out.push(Node::Boolean(*b)),
            Expr::Str(s) => out.push(Node::String(s)),
            Expr::Num(n) => out.push(Node::Number(*n)),
            Expr::Empty => {}
            Expr::Child(target, name) => {
                self.with_input(
                    target,
                    focus,
                    |input, out| {
                        for n in input {
                            child(n, name, out);
                        }
                    },
                    out,
                );
            }
            Expr::Call(target, func) => {
                self.with_input(target, focus, |input, out| self.call(func, input, out), out);
            }
            Expr::Index(target, index) => {
                let input = self.collect(target, focus);
                let index = self.collect(index, focus);
                if let [n] = index[..]
                    && let Some(i) = n.as_number()
                    && i >= 0.0
                    && let Some(item) = input.get(i as usize)
                {
                    out.push(*item);
                }
            }
            Expr::Union(branches) => {
                let start = out.len();
                for b in branches {
                    let from = out.len();
                    self.eval(b, focus, out);
                    // `|` is a set union. Branches are usually disjoint, so only look for
                    // repeats when a small collection makes that cheap.
                    if from > start && out.len() - start <= 64 {
                        let mut i = from;
                        while i < out.len() {
                            if out[start..from].iter().any(|m| m.same(&out[i])) {
                                out.remove(i);
                            } else {
                                i += 1;
                            }
                        }
                    }
                }
            }
            Expr::Binary(op, l, r) => self.binary(*op, l, r, focus, out),
            Expr::Is(target, TypeSpec(t)) => {
                let input = self.collect(target, focus);
                if let [n] = input[..] {
                    out.push(Node::Boolean(n.is_a(*t)));
                }
            }
            Expr::As(target, TypeSpec(t)) => {
                let from = out.len();
                self.eval(target, focus, out);
                retain_from(out, from, |n| n.is_a(*t));
            }
        }
    }

    fn call(&self, func: &'a Func, input: &[Node<'a>], out: &mut Vec<Node<'a>>) {
        match func {
            Func::Where(criteria) => {
                let mut scratch = Vec::new();
                for n in input {
                    scratch.clear();
                    self.eval(criteria, std::slice::from_ref(n), &mut scratch);
                    if truth(&scratch) == Some(true) {
                        out.push(*n);
                    }
                }
            }
            Func::Select(projection) => {
                for n in input {
                    self.eval(projection, std::slice::from_ref(n), out);
                }
            }
            Func::Exists(None) => out.push(Node::Boolean(!input.is_empty())),
            Func::Exists(Some(criteria)) => {
                let mut scratch = Vec::new();
                let found = input.iter().any(|n| {
                    scratch.clear();
                    self.eval(criteria, std::slice::from_ref(n), &mut scratch);
                    truth(&scratch) == Some(true)
                });
                out.push(Node::Boolean(found));
            }
            Func::All(criteria) => {
                let mut scratch = Vec::new();
                let all = input.iter().all(|n| {
                    scratch.clear();
                    self.eval(criteria, std::slice::from_ref(n), &mut scratch);
                    truth(&scratch) == Some(true)
                });
                out.push(Node::Boolean(all));
            }
            Func::Empty => out.push(Node::Boolean(input.is_empty())),
            Func::First => out.extend(input.first()),
            Func::Last => out.extend(input.last()),
            Func::Tail => out.extend(input.iter().skip(1)),
            Func::Single => {
                if let [n] = input {
                    out.push(*n);
                }
            }
            Func::Skip(n) | Func::Take(n) => {
                let count = self.collect(n, input);
                let Some(k) = count.first().and_then(Node::as_number) else {
                    return;
                };
                let k = k.max(0.0) as usize;
                if matches!(func, Func::Skip(_)) {
                    out.extend(input.iter().skip(k));
                } else {
                    out.extend(input.iter().take(k));
                }
            }
            Func::Not => {
                if let Some(b) = truth(input) {
                    out.push(Node::Boolean(!b));
                }
            }
            Func::Count => out.push(Node::Number(input.len() as f64)),
            Func::HasValue => out.push(Node::Boolean(matches!(
                input,
                [Node::Element { value, .. }] if !value.is_object() && !value.is_array()
            ))),
            Func::Distinct => {
                for n in input {
                    if !out.iter().any(|m| m.same(n)) {
                        out.push(*n);
                    }
                }
            }
            Func::OfType(TypeSpec(t)) => out.extend(input.iter().filter(|n| n.is_a(*t))),
            Func::Extension(url) => {
                for n in input {
                    if let Node::Element {
                        value: Value::Object(obj),
                        ..
                    } = n
                        && let Some(Value::Array(exts)) = obj.get("extension")
                    {
                        for ext in exts {
                            if ext.get("url").and_then(Value::as_str) == Some(&**url) {
                                out.push(Node::Element {
                                    value: ext,
                                    ty: MODEL.extension,
                                });
                            }
                        }
                    }
                }
            }
            Func::Resolve => {
                for n in input {
                    self.resolve(n, out);
                }
            }
        }
    }

    /// `resolve()` without a store: a contained target is found in the resource; any other
    /// target is known only by the type its reference names, which is all `resolve() is X`
    /// (the only use the search expressions make of it) needs.
    fn resolve(&self, n: &Node<'a>, out: &mut Vec<Node<'a>>) {
        let Node::Element { value, .. } = *n else {
            return;
        };
        let (reference, declared) = match value {
            Value::String(s) => (Some(s.as_str()), None),
            Value::Object(obj) => (
                obj.get("reference").and_then(Value::as_str),
                obj.get("type").and_then(Value::as_str),
            ),
            _ => return,
        };
        let target = reference.map(parse_reference);
        match target {
            Some(ReferenceTarget {
                contained: Some(id),
                ..
            }) => {
                if id.is_empty() {
                    out.push(self.root);
                } else if let Some(Value::Array(contained)) = self.resource.get("contained")
                    && let Some(r) = contained
                        .iter()
                        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
                {
                    out.push(Node::resource(r));
                }
            }
            Some(ReferenceTarget {
                resource_type: Some(t),
                ..
            }) => out.push(Node::Resolved {
                resource_type: Some(t),
            }),
            _ => out.push(Node::Resolved {
                resource_type: declared,
            }),
        }
    }

    fn binary(
        &self,
        op: BinOp,
        l: &'a Expr,
        r: &'a Expr,
        focus: &[Node<'a>],
        out: &mut Vec<Node<'a>>,
    ) {
        let left = self.collect(l, focus);
        // Three-valued logic: an empty operand is "unknown", and `false and {}` is still false.
        let (a, short_circuit) = match op {
            BinOp::And => (truth(&left), Some(false)),
            BinOp::Or => (truth(&left), Some(true)),
            BinOp::Implies => (truth(&left), Some(false)),
            _ => (None, None),
        };
        if short_circuit.is_some() && a == short_circuit {
            out.push(Node::Boolean(op != BinOp::And));
            return;
        }
        let logic = match op {
            BinOp::And => match (a, truth(&self.collect(r, focus))) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            BinOp::Or => match (a, truth(&self.collect(r, focus))) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            BinOp::Xor => match (truth(&left), truth(&self.collect(r, focus))) {
                (Some(a), Some(b)) => Some(a != b),
                _ => None,
            },
            BinOp::Implies => match (a, truth(&self.collect(r, focus))) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            },
            _ => {
                self.compare(op, left, r, focus, out);
                return;
            }
        };
        out.extend(logic.map(Node::Boolean));
    }

    fn compare(
        &self,
        op: BinOp,
        left: Vec<Node<'a>>,
        r: &'a Expr,
        focus: &[Node<'a>],
        out: &mut Vec<Node<'a>>,
    ) {
        let right = self.collect(r, focus);
        match op {
            BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => {
                let equiv = matches!(op, BinOp::Equiv | BinOp::NotEquiv);
                let result = if left.is_empty() || right.is_empty() {
                    if equiv {
                        Some(left.is_empty() && right.is_empty())
                    } else {
                        None
                    }
                } else {
                    Some(
                        left.len() == right.len()
                            && left
                                .iter()
                                .zip(&right)
                                .all(|(a, b)| if equiv { a.equivalent(b) } else { a.equals(b) }),
                    )
                };
                if let Some(eq) = result {
                    out.push(Node::Boolean(eq == matches!(op, BinOp::Eq | BinOp::Equiv)));
                }
            }
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                if let ([a], [b]) = (&left[..], &right[..])
                    && let Some(ord) = a.compare(b)
                {
                    use std::cmp::Ordering::*;
                    out.push(Node::Boolean(match op {
                        BinOp::Lt => ord == Less,
                        BinOp::Gt => ord == Greater,
                        BinOp::Le => ord != Greater,
                        _ => ord != Less,
                    }));
                }
            }
            BinOp::In | BinOp::Contains => {
                let (item, collection) = if op == BinOp::In {
                    (&left, &right)
                } else {
                    (&right, &left)
                };
                if let [item] = &item[..] {
                    out.push(Node::Boolean(collection.iter().any(|c| c.equals(item))));
                }
            }
            BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies => unreachable!(),
        }
    }
}

fn retain_from<'a>(out: &mut Vec<Node<'a>>, from: usize, keep: impl Fn(&Node<'a>) -> bool) {
    let mut w = from;
    for r in from..out.len() {
        if keep(&out[r]) {
            out[w] = out[r];
            w += 1;
        }
    }
    out.truncate(w);
}

/// A collection as a boolean (FHIRPath "singleton evaluation"): empty is unknown, a single
/// boolean is itself, any other single item is true.
pub(crate) fn truth(c: &[Node]) -> Option<bool> {
    match c {
        [] => None,
        [Node::Boolean(b)] => Some(*b),
        [
            Node::Element {
                value: Value::Bool(b),
                ..
            },
        ] => Some(*b),
        _ => Some(true),
    }
}

/// `node.name`: the element's value(s), each typed from the model; arrays are flattened.
fn child<'a>(n: &Node<'a>, name: &str, out: &mut Vec<Node<'a>>) {
    let Node::Element {
        value: Value::Object(obj),
        ty,
    } = *n
    else {
        return;
    };
    match MODEL.element(ty, name) {
        Some(el) if !el.choice => {
            let (json, t) = el.variants[0];
            if let Some(v) = get(obj, json) {
                push_items(v, t, out);
            }
        }
        Some(el) => {
            // A choice has up to 50 JSON names (Extension.value[x]) and an object a handful of
            // keys: probe whichever side is smaller.
            if el.variants.len() <= obj.len() {
                for (json, t) in &el.variants {
                    if let Some(v) = get(obj, json) {
                        push_items(v, *t, out);
                    }
                }
            } else {
                for (k, v) in obj {
                    if k.len() > name.len()
                        && k.starts_with(name)
                        && let Ok(i) = el.variants.binary_search_by(|(j, _)| (*j).cmp(k.as_str()))
                    {
                        push_items(v, el.variants[i].1, out);
                    }
                }
            }
        }
        None if ty == FhirType::UNKNOWN => {
            if let Some(v) = obj.get(name) {
                push_items(v, TypeRef::Type(FhirType::UNKNOWN), out);
            }
        }
        None => {}
    }
}

/// `obj.get(key)`, without hashing for the objects FHIR elements and resources are: a scan
/// over their keys (compared by length first, in one contiguous array) beats SipHash on every
/// path step, up to a few dozen keys (a resource's top level often has more than 8: hashing
/// there was ~1 % of the indexer's CPU).
#[inline]
pub(crate) fn get<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if obj.len() <= 32 {
        obj.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        obj.get(key)
    }
}

fn push_items<'a>(v: &'a Value, t: TypeRef, out: &mut Vec<Node<'a>>) {
    let one = |v: &'a Value| -> Option<Node<'a>> {
        if v.is_null() {
            // Placeholders in primitive arrays aligned with their `_name` companions.
            return None;
        }
        Some(match t {
            TypeRef::Type(ty) => Node::Element { value: v, ty },
            TypeRef::AnyResource => Node::resource(v),
        })
    };
    match v {
        Value::Array(items) => out.extend(items.iter().filter_map(one)),
        v => out.extend(one(v)),
    }
}
