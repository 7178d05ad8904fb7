//! Turns a parsed search into a tantivy query. Terms select candidates exactly where they can;
//! where they cannot (date containment, composite pairs) a predicate over the packed values
//! decides, with the same `matching` functions the reference evaluator uses.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use tantivy::query::doc_predicate_query::{DocPredicateQuery, FunctionPredicate};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Searcher, SegmentReader, Term};

use super::extract::IndexValue;
use super::index::ID;
use super::indexer::SearchIndex;
use super::matching::value_matches;
use super::query::{
    Clause, Prefix, ReferenceMatch, StringMode, SystemMatch, UriMode, ValuePredicate,
};
use super::terms::{ANY, hex_f64, hex_i64, join, local, prefix, prefix_end};

/// Sub-searches (chains, `_has`) may produce at most this many ids.
pub const MAX_INTERMEDIATE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    TooCostly(String),
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("reading the index: {0}")]
    Io(#[from] std::io::Error),
}

type Q = Box<dyn Query>;

fn term(field: Field, text: &str) -> Q {
    term_query(Term::from_field_text(field, text))
}

fn term_query(t: Term) -> Q {
    Box::new(TermQuery::new(t, IndexRecordOption::Basic))
}

fn range(field: Field, low: Bound<String>, high: Bound<String>) -> Q {
    let map = |b: Bound<String>| match b {
        Bound::Included(s) => Bound::Included(Term::from_field_text(field, &s)),
        Bound::Excluded(s) => Bound::Excluded(Term::from_field_text(field, &s)),
        Bound::Unbounded => Bound::Unbounded,
    };
    Box::new(RangeQuery::new(map(low), map(high)))
}

/// Terms of `code` on `field` starting with `start` (the code's own prefix included).
fn prefixed(field: Field, start: String) -> Q {
    let end = prefix_end(&start);
    range(field, Bound::Included(start), Bound::Excluded(end))
}

fn all(qs: Vec<Q>) -> Q {
    match qs.len() {
        0 => Box::new(AllQuery),
        1 => qs.into_iter().next().expect("one"),
        _ => Box::new(BooleanQuery::new(
            qs.into_iter().map(|q| (Occur::Must, q)).collect(),
        )),
    }
}

fn any_of(qs: Vec<Q>) -> Q {
    match qs.len() {
        0 => Box::new(EmptyQuery),
        1 => qs.into_iter().next().expect("one"),
        _ => Box::new(BooleanQuery::new(
            qs.into_iter().map(|q| (Occur::Should, q)).collect(),
        )),
    }
}

fn not(q: Q) -> Q {
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, Box::new(AllQuery)),
        (Occur::MustNot, q),
    ]))
}

/// The packed values of `code` on a document decide the match (any of `ps`).
fn packed_predicate(index: &SearchIndex, code: &str, ps: Vec<ValuePredicate>, now: i64) -> Q {
    let code = code.to_string();
    let base = index.base.clone();
    let p = Arc::new(ps);
    let cache = index.columns.clone();
    let predicate = FunctionPredicate::from(move |segment: &SegmentReader| {
        let columns = cache.get(segment);
        let (code, base, p) = (code.clone(), base.clone(), p.clone());
        Ok(move |doc: DocId| {
            let mut buf = Vec::new();
            if !columns.packed_bytes(doc, &mut buf) {
                return false;
            }
            super::packed::unpack(&buf, &code)
                .iter()
                .any(|v| p.iter().any(|p| value_matches(v, p, &base, now)))
        })
    });
    Box::new(DocPredicateQuery::from(predicate))
}

pub struct Planner<'a> {
    pub index: &'a SearchIndex,
    pub searcher: &'a Searcher,
    pub now: i64,
    /// The caller's access filter: chained and `_has` sub-queries match only resources the
    /// caller may see, or they would tell what it may not (a Patient found through a hidden
    /// HIV result).
    pub policy: Option<&'a dyn tantivy::query::Query>,
}

impl Planner<'_> {
    pub fn types(&self, types: &[String]) -> Q {
        any_of(
            types
                .iter()
                .map(|t| term(self.index.fields.resource_type, t))
                .collect(),
        )
    }

    /// The whole query: the types, then every clause (AND).
    pub fn query(&self, types: &[String], clauses: &[Clause]) -> Result<Q, PlanError> {
        let mut parts = vec![self.types(types)];
        let narrowed = clauses.iter().any(|c| self.narrows(types, c));
        for c in clauses {
            parts.push(match c {
                // Beside a clause that selects few documents, a date is checked on those
                // documents' packed values alone: a term range over dates walks every distinct
                // value it spans (all of them for `ge`/`le`), which grows with the index.
                Clause::Values {
                    code,
                    values,
                    negated: false,
                    ..
                } if narrowed
                    && values
                        .iter()
                        .all(|v| matches!(v, ValuePredicate::Date { .. })) =>
                {
                    packed_predicate(self.index, code, values.clone(), self.now)
                }
                _ => self.clause(types, c)?,
            });
        }
        Ok(all(parts))
    }

    /// Whether a clause is answered from few postings, so that an intersection it leads
    /// visits few documents.
    fn narrows(&self, types: &[String], clause: &Clause) -> bool {
        const FEW: u64 = 20_000;
        let f = &self.index.fields;
        let freq = |t: &Term| self.searcher.doc_freq(t).unwrap_or(u64::MAX);
        match clause {
            // At most one document per type and value (the `key` terms).
            Clause::Values {
                code,
                negated: false,
                ..
            } if code == ID => true,
            Clause::Values {
                code,
                values,
                negated: false,
                ..
            } => {
                let mut docs = 0u64;
                for v in values {
                    docs = docs.saturating_add(match v {
                        ValuePredicate::Token {
                            system,
                            code: Some(c),
                        } => freq(&Term::from_field_text(
                            f.token,
                            &token_text(code, system, c),
                        )),
                        ValuePredicate::Reference(m) => self
                            .reference(types, code, m)
                            .iter()
                            .map(freq)
                            .fold(0u64, u64::saturating_add),
                        ValuePredicate::String {
                            mode: StringMode::Exact,
                            text,
                        } => freq(&Term::from_field_text(f.exact, &join(&[code, text]))),
                        _ => return false,
                    });
                }
                docs <= FEW
            }
            Clause::Compartment(p) => freq(&Term::from_field_text(f.compartment, p)) <= FEW,
            Clause::AnyCompartment(ps) => {
                ps.iter()
                    .map(|p| freq(&Term::from_field_text(f.compartment, p)))
                    .fold(0u64, u64::saturating_add)
                    <= FEW
            }
            // Resolved to at most MAX_INTERMEDIATE targets.
            Clause::Chain { .. } | Clause::Has { .. } => true,
            _ => false,
        }
    }

    fn clause(&self, types: &[String], clause: &Clause) -> Result<Q, PlanError> {
        let f = &self.index.fields;
        Ok(match clause {
            Clause::Values {
                code,
                values,
                negated,
                ..
            } if code == ID => {
                let q = id_query(f, types, values);
                if *negated { not(q) } else { q }
            }
            // Every resource has an id.
            Clause::Missing { code, missing } if code == ID => {
                if *missing {
                    Box::new(EmptyQuery)
                } else {
                    Box::new(AllQuery)
                }
            }
            Clause::Values {
                code,
                param_type: _,
                values,
                negated,
            } => {
                let alternatives = values
                    .iter()
                    .map(|v| self.value(types, code, v))
                    .collect::<Vec<_>>();
                let q = any_of(alternatives);
                if *negated { not(q) } else { q }
            }
            Clause::Missing { code, missing } => {
                let has = term(f.has, code);
                if *missing { not(has) } else { has }
            }
            Clause::FullText {
                narrative_only,
                text,
            } => {
                let field = if *narrative_only {
                    f.narrative
                } else {
                    f.content
                };
                let mut analyzer = self
                    .index
                    .index
                    .tokenizers()
                    .get(super::index::FOLDED)
                    .expect("folded tokenizer");
                let mut stream = analyzer.token_stream(text);
                let mut words = Vec::new();
                while let Some(token) = stream.next() {
                    words.push(term(field, &token.text));
                }
                if words.is_empty() {
                    Box::new(EmptyQuery)
                } else {
                    all(words)
                }
            }
            Clause::Compartment(patient) => term(f.compartment, patient),
            Clause::AnyCompartment(patients) => {
                any_of(patients.iter().map(|p| term(f.compartment, p)).collect())
            }
            Clause::Chain {
                code,
                target_types,
                inner,
            } => {
                let targets = self.matching_keys(target_types, std::slice::from_ref(inner))?;
                let terms: Vec<Term> = targets
                    .iter()
                    .map(|(t, id)| {
                        Term::from_field_text(f.reference, &join(&[code, &local(t, id)]))
                    })
                    .collect();
                crate::search::terms::any_of(terms)
            }
            Clause::Has {
                source_type,
                reference_code,
                inner,
            } => {
                let sources = self.matching_docs(
                    std::slice::from_ref(source_type),
                    std::slice::from_ref(inner),
                )?;
                let mut ids = BTreeSet::new();
                for values in self.packed_values(&sources, reference_code)? {
                    for v in values {
                        if let IndexValue::Reference {
                            resource_type: Some(t),
                            id: Some(id),
                            url,
                            ..
                        } = v
                            && types.contains(&t)
                            && super::index::is_local(&url, &self.index.base)
                        {
                            ids.insert(local(&t, &id));
                        }
                    }
                }
                if ids.len() > MAX_INTERMEDIATE {
                    return Err(PlanError::TooCostly(format!(
                        "_has matches more than {MAX_INTERMEDIATE} resources; narrow it"
                    )));
                }
                let terms: Vec<Term> = ids
                    .iter()
                    .map(|key| Term::from_field_text(f.key, key))
                    .collect();
                crate::search::terms::any_of(terms)
            }
        })
    }

    /// Doc addresses matching `clauses` on `types`, bounded.
    pub fn matching_docs(
        &self,
        types: &[String],
        clauses: &[Clause],
    ) -> Result<Vec<tantivy::DocAddress>, PlanError> {
        let mut q = self.query(types, clauses)?;
        if let Some(policy) = self.policy {
            q = all(vec![q, policy.box_clone()]);
        }
        let docs = self
            .searcher
            .search(&q, &tantivy::collector::DocSetCollector)?;
        if docs.len() > MAX_INTERMEDIATE {
            return Err(PlanError::TooCostly(format!(
                "a chained or _has search matches more than {MAX_INTERMEDIATE} resources; narrow it"
            )));
        }
        Ok(docs.into_iter().collect())
    }

    /// `(type, id)` of the documents matching `clauses` on `types`.
    pub fn matching_keys(
        &self,
        types: &[String],
        clauses: &[Clause],
    ) -> Result<Vec<(String, String)>, PlanError> {
        let docs = self.matching_docs(types, clauses)?;
        self.keys_of(&docs)
    }

    pub fn key_of(&self, d: tantivy::DocAddress) -> Result<(String, String), PlanError> {
        Ok(self.keys_of(&[d])?.pop().unwrap_or_default())
    }

    /// `(type, id)` of each document, in the given order. A string column's dictionary is
    /// read in blocks: looking ids up one by one decodes a block per document, so each
    /// segment's ids are read in ordinal order, in one pass over the blocks they fall in.
    pub fn keys_of(
        &self,
        docs: &[tantivy::DocAddress],
    ) -> Result<Vec<(String, String)>, PlanError> {
        let mut out = vec![(String::new(), String::new()); docs.len()];
        let mut by_segment: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, d) in docs.iter().enumerate() {
            by_segment.entry(d.segment_ord).or_default().push(i);
        }
        for (segment_ord, positions) in by_segment {
            let columns = self
                .index
                .columns
                .get(self.searcher.segment_reader(segment_ord));
            for (name, col) in [("type", &columns.types), ("id", &columns.ids)] {
                let col = col.as_ref().ok_or_else(|| {
                    PlanError::Tantivy(tantivy::TantivyError::SchemaError(format!("{name} column")))
                })?;
                let mut ords: Vec<(u64, usize)> = positions
                    .iter()
                    .filter_map(|&i| col.term_ords(docs[i].doc_id).next().map(|o| (o, i)))
                    .collect();
                ords.sort_unstable();
                let sorted: Vec<u64> = ords.iter().map(|(o, _)| *o).collect();
                let mut slots = ords.iter().map(|(_, i)| *i);
                col.dictionary().sorted_ords_to_term_cb(&sorted, |bytes| {
                    if let Some(i) = slots.next() {
                        let text = String::from_utf8_lossy(bytes).into_owned();
                        if name == "type" {
                            out[i].0 = text;
                        } else {
                            out[i].1 = text;
                        }
                    }
                })?;
            }
        }
        Ok(out)
    }

    /// The packed values of `code` on each document.
    pub fn packed_values(
        &self,
        docs: &[tantivy::DocAddress],
        code: &str,
    ) -> Result<Vec<Vec<IndexValue>>, PlanError> {
        let mut out = Vec::with_capacity(docs.len());
        let mut buf = Vec::new();
        for d in docs {
            let columns = self
                .index
                .columns
                .get(self.searcher.segment_reader(d.segment_ord));
            let found = columns.packed_bytes(d.doc_id, &mut buf);
            out.push(if found {
                super::packed::unpack(&buf, code)
            } else {
                Vec::new()
            });
        }
        Ok(out)
    }

    fn value(&self, types: &[String], code: &str, v: &ValuePredicate) -> Q {
        let f = &self.index.fields;
        let p = prefix(code);
        match v {
            ValuePredicate::String { mode, text } => match mode {
                StringMode::StartsWith => prefixed(f.string, format!("{p}{text}")),
                StringMode::Exact => term(f.exact, &join(&[code, text])),
                StringMode::Contains => {
                    let pattern = format!("{}.*{}.*", regex_escape(&p), regex_escape(text));
                    match RegexQuery::from_pattern(&pattern, f.string) {
                        Ok(q) => Box::new(q),
                        Err(_) => Box::new(EmptyQuery),
                    }
                }
            },
            ValuePredicate::Token { system, code: c } => {
                let text = match (system, c) {
                    (system, Some(c)) => token_text(code, system, c),
                    (SystemMatch::Is(s), None) => join(&[code, s, &ANY.to_string()]),
                    (_, None) => return term(f.has, code),
                };
                term(f.token, &text)
            }
            ValuePredicate::TokenText(text) => {
                let words: Vec<Q> = text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(|w| prefixed(f.token_text, format!("{p}{w}")))
                    .collect();
                if words.is_empty() {
                    Box::new(EmptyQuery)
                } else {
                    all(words)
                }
            }
            ValuePredicate::OfType {
                type_system,
                type_code,
                value,
            } => term(
                f.token,
                &join(&[&format!("{code}:of-type"), type_system, type_code, value]),
            ),
            ValuePredicate::Reference(m) => {
                crate::search::terms::any_of(self.reference(types, code, m))
            }
            ValuePredicate::Date {
                prefix: pre,
                low,
                high,
            } => {
                let lo = |b: Bound<i64>, t: Bound<i64>| {
                    range(
                        f.low,
                        bound_hex(&p, b, Side::Low),
                        bound_hex(&p, t, Side::High),
                    )
                };
                let hi = |b: Bound<i64>, t: Bound<i64>| {
                    range(
                        f.high,
                        bound_hex(&p, b, Side::Low),
                        bound_hex(&p, t, Side::High),
                    )
                };
                use Bound::*;
                let exact = |q: Q| q;
                let checked = |q: Q| {
                    all(vec![
                        q,
                        packed_predicate(self.index, code, vec![v.clone()], self.now),
                    ])
                };
                match pre {
                    Prefix::Gt => exact(hi(Excluded(*high), Unbounded)),
                    Prefix::Lt => exact(lo(Unbounded, Excluded(*low))),
                    Prefix::Sa => exact(lo(Excluded(*high), Unbounded)),
                    Prefix::Eb => exact(hi(Unbounded, Excluded(*low))),
                    // A value within [low, high] has both its bounds there (lo ≤ hi), so both
                    // term ranges are the query's own day, month or year instead of every
                    // later (lo) or earlier (hi) value in the index: a range walks every term
                    // it spans and opens each one's postings.
                    Prefix::Eq => checked(all(vec![
                        lo(Included(*low), Included(*high)),
                        hi(Included(*low), Included(*high)),
                    ])),
                    Prefix::Ge => checked(hi(Included(*low), Unbounded)),
                    Prefix::Le => checked(lo(Unbounded, Included(*high))),
                    Prefix::Ne | Prefix::Ap => checked(term(f.has, code)),
                }
            }
            ValuePredicate::Number {
                prefix: pre,
                value,
                low,
                high,
            } => self.numeric(
                &format!("{p}{ANY}{}", super::terms::SEP),
                *pre,
                *value,
                *low,
                *high,
            ),
            ValuePredicate::Quantity {
                prefix: pre,
                value,
                low,
                high,
                qualifier,
            } => self.numeric(
                &format!("{p}{qualifier}{}", super::terms::SEP),
                *pre,
                *value,
                *low,
                *high,
            ),
            ValuePredicate::Uri { mode, uri } => match mode {
                UriMode::Exact => term(f.uri, &join(&[code, uri])),
                UriMode::Below => prefixed(f.uri, format!("{p}{uri}")),
                UriMode::Above => {
                    // Every ancestor path of the given URL, itself included.
                    let mut terms = Vec::new();
                    let mut end = uri.len();
                    loop {
                        terms.push(Term::from_field_text(f.uri, &join(&[code, &uri[..end]])));
                        match uri[..end].rfind('/') {
                            Some(i) if i > uri.find("://").map(|s| s + 3).unwrap_or(0) => end = i,
                            _ => break,
                        }
                    }
                    crate::search::terms::any_of(terms)
                }
            },
            ValuePredicate::Composite(parts) => {
                let mut qs: Vec<Q> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| self.value(types, &format!("{code}${i}"), part))
                    .collect();
                qs.push(packed_predicate(
                    self.index,
                    code,
                    vec![v.clone()],
                    self.now,
                ));
                all(qs)
            }
        }
    }

    /// The terms of a reference value. An id without a type is a reference to a resource of
    /// any type the parameter may refer to (on `types`): one `Type/id` term each. The index
    /// keeps no any-type term beside each `Type/id` one, as each was another term few
    /// documents held (every Provenance target, every link), built into the segment's
    /// dictionary and rewritten by merges, for a query form a type can replace.
    fn reference(&self, types: &[String], code: &str, m: &ReferenceMatch) -> Vec<Term> {
        let f = &self.index.fields;
        match m {
            ReferenceMatch::Local { resource_type, id } => {
                let local =
                    |t: &str| Term::from_field_text(f.reference, &join(&[code, &local(t, id)]));
                match resource_type {
                    Some(t) => vec![local(t)],
                    None => self
                        .reference_targets(types, code)
                        .iter()
                        .map(|t| local(t))
                        .collect(),
                }
            }
            ReferenceMatch::Url(u) => {
                // A URL under this server's base is a local reference.
                if let Some(rest) = u.strip_prefix(&format!("{}/", self.index.base))
                    && let Some((t, id)) = rest.split_once('/')
                {
                    return vec![Term::from_field_text(
                        f.reference,
                        &join(&[code, &local(t, id)]),
                    )];
                }
                vec![Term::from_field_text(f.reference, &join(&[code, u]))]
            }
            ReferenceMatch::Identifier { system, value } => {
                let s = match system {
                    SystemMatch::Any => ANY.to_string(),
                    SystemMatch::None => String::new(),
                    SystemMatch::Is(s) => s.clone(),
                };
                vec![Term::from_field_text(
                    f.reference_identifier,
                    &join(&[code, &s, value]),
                )]
            }
        }
    }

    /// The types `code` may refer to on any of `types`; every resource type for a parameter
    /// the registry does not name a target for (a composite's component).
    fn reference_targets(&self, types: &[String], code: &str) -> BTreeSet<String> {
        let registry = &self.index.registry;
        let mut out: BTreeSet<String> = types
            .iter()
            .filter_map(|t| registry.get(t, code))
            .flat_map(|p| p.targets.iter().cloned())
            .collect();
        if out.is_empty() {
            out = crate::validation::resource_types()
                .map(str::to_string)
                .collect();
        }
        out
    }

    /// Number and quantity prefixes as term ranges over `start` + hex(value).
    fn numeric(&self, start: &str, pre: Prefix, value: f64, low: f64, high: f64) -> Q {
        let f = self.index.fields.number;
        let at = |v: f64| format!("{start}{}", hex_f64(v));
        let first = start.to_string();
        let last = prefix_end(start);
        use Bound::*;
        let r = |a: Bound<String>, b: Bound<String>| range(f, a, b);
        match pre {
            Prefix::Eq => r(Included(at(low)), Excluded(at(high))),
            Prefix::Ne => any_of(vec![
                r(Included(first.clone()), Excluded(at(low))),
                r(Included(at(high)), Excluded(last.clone())),
            ]),
            Prefix::Gt => r(Excluded(at(value)), Excluded(last)),
            Prefix::Lt => r(Included(first), Excluded(at(value))),
            Prefix::Ge => r(Included(at(value)), Excluded(last)),
            Prefix::Le => r(Included(first), Included(at(value))),
            Prefix::Sa => r(Included(at(high)), Excluded(last)),
            Prefix::Eb => r(Included(first), Excluded(at(low))),
            Prefix::Ap => {
                let slack = (value.abs() * 0.1).max(high - low);
                r(Included(at(value - slack)), Included(at(value + slack)))
            }
        }
    }
}

/// `_id` is answered from the `key` terms (`Type/id`, one per document, there to delete a
/// replaced version): the index holds no `_id` token terms, which were two more terms only one
/// document had, built into every segment's dictionary and rewritten by every merge. An id has
/// no system, so `|x` matches as `x` does and `system|x` matches nothing, as the token terms did.
fn id_query(f: &super::index::Fields, types: &[String], values: &[ValuePredicate]) -> Q {
    let mut terms = Vec::new();
    for v in values {
        if let ValuePredicate::Token {
            system: SystemMatch::Any | SystemMatch::None,
            code: Some(id),
        } = v
        {
            for t in types {
                terms.push(Term::from_field_text(f.key, &local(t, id)));
            }
        }
    }
    crate::search::terms::any_of(terms)
}

/// The token term of `system|code` (any system, none, or the given one).
fn token_text(param: &str, system: &SystemMatch, code: &str) -> String {
    match system {
        SystemMatch::Any => join(&[param, &ANY.to_string(), code]),
        SystemMatch::None => join(&[param, "", code]),
        SystemMatch::Is(s) => join(&[param, s, code]),
    }
}

enum Side {
    Low,
    High,
}

/// A date bound as a term bound within the parameter's own prefix.
fn bound_hex(p: &str, b: Bound<i64>, side: Side) -> Bound<String> {
    match b {
        Bound::Included(v) => Bound::Included(format!("{p}{}", hex_i64(v))),
        Bound::Excluded(v) => Bound::Excluded(format!("{p}{}", hex_i64(v))),
        Bound::Unbounded => match side {
            Side::Low => Bound::Included(p.to_string()),
            Side::High => Bound::Excluded(prefix_end(p)),
        },
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
