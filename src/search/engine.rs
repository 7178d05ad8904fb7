//! Runs a search: waits until the index holds every write committed before the search began,
//! queries with authorisation and paging inside the index query, ranks, then loads the page's
//! versions (exactly as indexed) and the included resources from PostgreSQL.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::doc_predicate_query::{DocPredicateQuery, FunctionPredicate};
use tantivy::query::{BooleanQuery, Occur, Query};
use tantivy::{DocAddress, DocId, Score, SegmentReader, Term};

use super::extract::IndexValue;
use super::indexer::{IndexError, SearchIndex};
use super::params::ParamType;
use super::plan::{PlanError, Planner};
use super::query::{Clause, Include, SearchQuery, SortKey, Summary, TotalMode};
use super::terms::join;
use crate::store::{Store, VersionRow};

/// Longest a search waits for the index to catch up before answering 503.
pub const FRESHNESS_TIMEOUT: Duration = Duration::from_secs(10);
/// Included resources per page, all rounds of `:iterate` together.
const MAX_INCLUDES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the paging cursor is not one this server issued; follow the Bundle's links")]
    BadCursor,
}

/// A filter the caller's access policy adds to every index query (None: no restriction).
pub type PolicyFilter = Option<Box<dyn Query>>;

pub struct SearchResult {
    pub total: Option<u64>,
    pub matches: Vec<VersionRow>,
    pub includes: Vec<VersionRow>,
    pub next: Option<String>,
    pub previous: Option<String>,
}

/// Sort position of a document: keys in sort order (missing values last), then type and id.
#[derive(Clone, Debug, PartialEq)]
pub struct Rank {
    keys: Vec<Option<Vec<u8>>>,
    descending: Arc<Vec<bool>>,
}

impl PartialOrd for Rank {
    /// Greater means "comes first": the top collector keeps the greatest.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        for (i, (a, b)) in self.keys.iter().zip(&other.keys).enumerate() {
            let desc = self.descending.get(i).copied().unwrap_or(false);
            let o = match (a, b) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(a), Some(b)) if desc => a.cmp(b),
                (Some(a), Some(b)) => b.cmp(a),
            };
            if o != Ordering::Equal {
                return Some(o);
            }
        }
        Some(Ordering::Equal)
    }
}

/// Reads the sort keys of documents in one segment.
struct RankReader {
    sort: Vec<SortKey>,
    descending: Arc<Vec<bool>>,
    types: Option<tantivy::columnar::StrColumn>,
    ids: Option<tantivy::columnar::StrColumn>,
    last_updated: Option<tantivy::columnar::Column<i64>>,
    packed_sort: Option<tantivy::columnar::BytesColumn>,
    buf: Vec<u8>,
}

impl RankReader {
    fn new(segment: &SegmentReader, sort: &[SortKey], descending: Arc<Vec<bool>>) -> RankReader {
        let ff = segment.fast_fields();
        RankReader {
            sort: sort.to_vec(),
            descending,
            types: ff.str("type").ok().flatten(),
            ids: ff.str("id").ok().flatten(),
            last_updated: ff.i64("last_updated").ok(),
            packed_sort: ff.bytes("sort").ok().flatten(),
            buf: Vec::new(),
        }
    }

    fn string(col: &Option<tantivy::columnar::StrColumn>, doc: DocId) -> Option<Vec<u8>> {
        let col = col.as_ref()?;
        let ord = col.term_ords(doc).next()?;
        let mut s = String::new();
        col.ord_to_str(ord, &mut s).ok()?;
        Some(s.into_bytes())
    }

    fn rank(&mut self, doc: DocId) -> Rank {
        let mut keys = Vec::with_capacity(self.sort.len() + 2);
        let mut packed_loaded = false;
        for s in &self.sort {
            let key = match s.code.as_str() {
                "_id" => Self::string(&self.ids, doc),
                "_lastUpdated" => self
                    .last_updated
                    .as_ref()
                    .and_then(|c| c.first(doc))
                    .map(|v| super::terms::hex_i64(v).into_bytes()),
                code => {
                    if !packed_loaded {
                        self.buf.clear();
                        if let Some(col) = &self.packed_sort
                            && let Some(ord) = col.term_ords(doc).next()
                        {
                            let _ = col.ord_to_bytes(ord, &mut self.buf);
                        }
                        packed_loaded = true;
                    }
                    super::index::unpack_sort_key(&self.buf, code).map(|(min, max)| {
                        if s.descending {
                            max.to_vec()
                        } else {
                            min.to_vec()
                        }
                    })
                }
            };
            keys.push(key);
        }
        keys.push(Self::string(&self.types, doc));
        keys.push(Self::string(&self.ids, doc));
        Rank {
            keys,
            descending: self.descending.clone(),
        }
    }
}

fn effective_sort(sort: &[SortKey]) -> Vec<SortKey> {
    if sort.is_empty() {
        vec![SortKey {
            code: "_lastUpdated".into(),
            descending: true,
        }]
    } else {
        sort.to_vec()
    }
}

fn descending_flags(sort: &[SortKey]) -> Arc<Vec<bool>> {
    let mut flags: Vec<bool> = sort.iter().map(|s| s.descending).collect();
    flags.extend([false, false]);
    Arc::new(flags)
}

fn encode_cursor(rank: &Rank, backwards: bool) -> String {
    let keys: Vec<Option<String>> = rank
        .keys
        .iter()
        .map(|k| {
            k.as_ref()
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        })
        .collect();
    URL_SAFE_NO_PAD.encode(serde_json::json!({"k": keys, "b": backwards}).to_string())
}

fn decode_cursor(s: &str, descending: Arc<Vec<bool>>) -> Option<(Rank, bool)> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let keys = v["k"]
        .as_array()?
        .iter()
        .map(|k| match k.as_str() {
            None => Some(None),
            Some(hex) => (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
                .map(Some),
        })
        .collect::<Option<Vec<_>>>()?;
    if keys.len() != descending.len() {
        return None;
    }
    Some((Rank { keys, descending }, v["b"].as_bool().unwrap_or(false)))
}

/// Documents strictly after (or, backwards, strictly before) `cursor` in rank order.
fn beyond(cursor: Rank, sort: Vec<SortKey>, backwards: bool) -> Box<dyn Query> {
    let descending = cursor.descending.clone();
    let cursor = Arc::new(cursor);
    let predicate = FunctionPredicate::from(move |segment: &SegmentReader| {
        // The predicate must be `Fn + Sync`; the reader's scratch buffer sits behind a lock
        // nobody contends (one segment is searched by one thread).
        let reader = std::sync::Mutex::new(RankReader::new(segment, &sort, descending.clone()));
        let cursor = cursor.clone();
        Ok(move |doc: DocId| {
            let r = reader.lock().expect("rank reader").rank(doc);
            match r.partial_cmp(&cursor) {
                Some(Ordering::Less) => !backwards,
                Some(Ordering::Greater) => backwards,
                _ => false,
            }
        })
    });
    Box::new(DocPredicateQuery::from(predicate))
}

pub struct Engine<'a> {
    pub index: &'a SearchIndex,
    pub store: &'a Store,
}

impl Engine<'_> {
    pub async fn search(
        &self,
        q: &SearchQuery,
        policy: PolicyFilter,
    ) -> Result<SearchResult, SearchError> {
        self.wait_fresh().await?;
        self.search_fresh(q, policy).await
    }

    /// Waits until every write committed before the call is searchable.
    pub async fn wait_fresh(&self) -> Result<(), SearchError> {
        Ok(self.index.wait_fresh(FRESHNESS_TIMEOUT).await?)
    }

    /// `search` for a caller that has just called `wait_fresh` (and read what it needed of
    /// the index's state after it, such as the access-facts generation).
    pub async fn search_fresh(
        &self,
        q: &SearchQuery,
        policy: PolicyFilter,
    ) -> Result<SearchResult, SearchError> {
        let searcher = self.index.searcher();
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        let planner = Planner {
            index: self.index,
            searcher: &searcher,
            now,
            policy: policy.as_deref(),
        };
        let mut query = planner.query(&q.resource_types, &q.clauses)?;
        if let Some(policy) = policy.as_ref().map(|p| p.box_clone()) {
            // The policy is part of the query before any counting or paging: pages stay full
            // and totals true.
            query = Box::new(BooleanQuery::new(vec![
                (Occur::Must, query),
                (Occur::Must, policy),
            ]));
        }
        let wants_total = matches!(
            (q.total, q.summary),
            (_, Summary::Count) | (TotalMode::Accurate | TotalMode::Estimate, _)
        );
        let counts_only = q.summary == Summary::Count || q.count == 0;
        // A first page is counted in the same pass that ranks it; a later page's query is
        // narrowed by its cursor, so its total takes a pass of its own.
        let counted_with_page = wants_total && !counts_only && q.cursor.is_none();
        let mut total = if wants_total && !counted_with_page {
            Some(searcher.search(&query, &Count)? as u64)
        } else {
            None
        };
        if counts_only {
            return Ok(SearchResult {
                total,
                matches: Vec::new(),
                includes: Vec::new(),
                next: None,
                previous: None,
            });
        }

        let sort = effective_sort(&q.sort);
        let descending = descending_flags(&sort);
        let (cursor, backwards) = match &q.cursor {
            Some(c) => {
                let (rank, backwards) =
                    decode_cursor(c, descending.clone()).ok_or(SearchError::BadCursor)?;
                (Some(rank), backwards)
            }
            None => (None, false),
        };
        let paged: Box<dyn Query> = match &cursor {
            Some(c) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, query.box_clone()),
                (Occur::Must, beyond(c.clone(), sort.clone(), backwards)),
            ])),
            None => query.box_clone(),
        };
        let limit = q.count + 1;
        let (sort_for_collector, flags) = (sort.clone(), descending.clone());
        let collector = TopDocs::with_limit(limit).tweak_score(move |segment: &SegmentReader| {
            let reader = std::cell::RefCell::new(RankReader::new(
                segment,
                &sort_for_collector,
                flags.clone(),
            ));
            move |doc: DocId, _score: Score| {
                let r = reader.borrow_mut().rank(doc);
                // Walking backwards, the documents nearest the cursor come first.
                Reversed {
                    rank: r,
                    reverse: backwards,
                }
            }
        });
        let mut hits: Vec<(Reversed, DocAddress)> = if counted_with_page {
            let (count, hits) = searcher.search(&paged, &(Count, collector))?;
            total = Some(count as u64);
            hits
        } else {
            searcher.search(&paged, &collector)?
        };
        let has_more = hits.len() > q.count;
        hits.truncate(q.count);
        if backwards {
            hits.reverse();
        }
        let ranks: Vec<Rank> = hits.iter().map(|(r, _)| r.rank.clone()).collect();
        let docs: Vec<DocAddress> = hits.iter().map(|(_, d)| *d).collect();

        let next = match (ranks.last(), backwards, has_more, &cursor) {
            (Some(last), false, true, _) => Some(encode_cursor(last, false)),
            // Walking back from a cursor: the page we came from follows.
            (Some(last), true, _, _) => Some(encode_cursor(last, false)),
            _ => None,
        };
        let previous = match (ranks.first(), backwards, has_more, &cursor) {
            (Some(first), false, _, Some(_)) => Some(encode_cursor(first, true)),
            (Some(first), true, true, _) => Some(encode_cursor(first, true)),
            _ => None,
        };

        let keys = self.doc_versions(&planner, &docs)?;
        let matches = self.load(&keys).await?;
        let includes = self.includes(&planner, q, &docs, &matches).await?;
        Ok(SearchResult {
            total,
            matches,
            includes,
            next,
            previous,
        })
    }

    fn doc_versions(
        &self,
        planner: &Planner<'_>,
        docs: &[DocAddress],
    ) -> Result<Vec<(String, String, i64)>, SearchError> {
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            let (t, id) = planner.key_of(*d)?;
            let segment = planner.searcher.segment_reader(d.segment_ord);
            let version = segment
                .fast_fields()
                .i64("version")?
                .first(d.doc_id)
                .unwrap_or(0);
            out.push((t, id, version));
        }
        Ok(out)
    }

    /// Loads versions, keeping the given order.
    async fn load(&self, keys: &[(String, String, i64)]) -> Result<Vec<VersionRow>, SearchError> {
        let rows = self.store.versions(keys).await?;
        let mut by_key: std::collections::HashMap<(String, String, i64), VersionRow> = rows
            .into_iter()
            .map(|r| ((r.resource_type.clone(), r.id.clone(), r.version_id), r))
            .collect();
        Ok(keys.iter().filter_map(|k| by_key.remove(k)).collect())
    }

    async fn includes(
        &self,
        planner: &Planner<'_>,
        q: &SearchQuery,
        docs: &[DocAddress],
        matches: &[VersionRow],
    ) -> Result<Vec<VersionRow>, SearchError> {
        if q.includes.is_empty() && q.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone()))
            .collect();
        let mut out = Vec::new();
        let mut frontier: Vec<DocAddress> = docs.to_vec();
        let mut first_round = true;
        while !frontier.is_empty() && out.len() < MAX_INCLUDES {
            let mut found: BTreeSet<(String, String)> = BTreeSet::new();
            let frontier_keys: Vec<(String, String)> = frontier
                .iter()
                .map(|d| planner.key_of(*d))
                .collect::<Result<_, _>>()?;
            for inc in q.includes.iter().filter(|i| first_round || i.iterate) {
                for (i, d) in frontier.iter().enumerate() {
                    let (t, _) = &frontier_keys[i];
                    if inc.source_type != "*" && &inc.source_type != t {
                        continue;
                    }
                    let codes = self.include_codes(t, inc);
                    for code in codes {
                        for v in planner
                            .packed_values(std::slice::from_ref(d), &code)?
                            .into_iter()
                            .flatten()
                        {
                            if let IndexValue::Reference {
                                resource_type: Some(rt),
                                id: Some(id),
                                url,
                                ..
                            } = v
                                && super::index::is_local(&url, &self.index.base)
                                && inc.target_type.as_ref().is_none_or(|tt| tt == &rt)
                            {
                                found.insert((rt, id));
                            }
                        }
                    }
                }
            }
            for rev in q.revincludes.iter().filter(|i| first_round || i.iterate) {
                let codes = self.include_codes(&rev.source_type, rev);
                let mut terms = Vec::new();
                for (t, id) in &frontier_keys {
                    if rev.target_type.as_ref().is_some_and(|tt| tt != t) {
                        continue;
                    }
                    for code in &codes {
                        terms.push(Term::from_field_text(
                            self.index.fields.reference,
                            &join(&[code, &format!("{t}/{id}")]),
                        ));
                    }
                }
                if terms.is_empty() {
                    continue;
                }
                let types = if rev.source_type == "*" {
                    Vec::new()
                } else {
                    vec![rev.source_type.clone()]
                };
                let mut parts: Vec<(Occur, Box<dyn Query>)> =
                    vec![(Occur::Must, crate::search::terms::any_of(terms))];
                if !types.is_empty() {
                    parts.push((Occur::Must, planner.types(&types)));
                }
                let hits = planner.searcher.search(
                    &BooleanQuery::new(parts),
                    &TopDocs::with_limit(MAX_INCLUDES).order_by_score(),
                )?;
                for (_, d) in hits {
                    found.insert(planner.key_of(d)?);
                }
            }
            first_round = false;
            let new: Vec<(String, String)> = found
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .collect();
            if new.is_empty() {
                break;
            }
            let heads = self.store.heads(&new).await?;
            let mut next_frontier = Vec::new();
            for h in heads.into_iter().filter(|h| !h.deleted) {
                next_frontier.extend(self.docs_for(planner, &h.resource_type, &h.id)?);
                out.push(VersionRow {
                    resource_type: h.resource_type,
                    id: h.id,
                    version_id: h.version_id,
                    last_updated: h.last_updated,
                    deleted: false,
                    method: String::new(),
                    content: h.content,
                    author_org: h.author_org,
                });
            }
            let iterating = q.includes.iter().chain(&q.revincludes).any(|i| i.iterate);
            if !iterating {
                break;
            }
            frontier = next_frontier;
        }
        out.truncate(MAX_INCLUDES);
        Ok(out)
    }

    fn docs_for(
        &self,
        planner: &Planner<'_>,
        t: &str,
        id: &str,
    ) -> Result<Vec<DocAddress>, SearchError> {
        let key = Term::from_field_text(self.index.fields.key, &format!("{t}/{id}"));
        let hits = planner.searcher.search(
            &tantivy::query::TermQuery::new(key, tantivy::schema::IndexRecordOption::Basic),
            &TopDocs::with_limit(1).order_by_score(),
        )?;
        Ok(hits.into_iter().map(|(_, d)| d).collect())
    }

    /// Reference parameter codes an include names (`*`: all of the type's references).
    fn include_codes(&self, resource_type: &str, inc: &Include) -> Vec<String> {
        if inc.code != "*" {
            return vec![inc.code.clone()];
        }
        self.index
            .registry
            .params_for(resource_type)
            .filter(|p| p.param_type == ParamType::Reference)
            .map(|p| p.code.clone())
            .collect()
    }
}

/// Rank wrapper letting one collector order forwards or backwards.
#[derive(Clone, Debug, PartialEq)]
struct Reversed {
    rank: Rank,
    reverse: bool,
}

impl PartialOrd for Reversed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let o = self.rank.partial_cmp(&other.rank)?;
        Some(if self.reverse { o.reverse() } else { o })
    }
}

/// A compartment clause for `Patient/{id}/{type}` searches.
pub fn compartment_clause(patient_id: &str) -> Clause {
    Clause::Compartment(format!("Patient/{patient_id}"))
}
