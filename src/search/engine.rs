//! Runs a search: waits until the index holds every write committed before the search began,
//! queries with authorisation and paging inside the index query, ranks, then loads the page's
//! versions (exactly as indexed) and the included resources from PostgreSQL.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query};
use tantivy::{DocAddress, Term};

use super::extract::IndexValue;
use super::indexer::{IndexError, SearchIndex};
use super::params::ParamType;
use super::plan::{PlanError, Planner};
use super::query::{Clause, Include, SearchQuery, Summary, TotalMode};
use super::rank::{
    Rank, TopRanked, beyond, decode_cursor, descending_flags, effective_sort, encode_cursor,
};
use super::terms::{join, local};
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
                (
                    Occur::Must,
                    beyond(
                        self.index.columns.clone(),
                        c.clone(),
                        sort.clone(),
                        backwards,
                    ),
                ),
            ])),
            None => query.box_clone(),
        };
        let collector = TopRanked {
            columns: self.index.columns.clone(),
            sort: sort.clone(),
            descending: descending.clone(),
            limit: q.count + 1,
            reverse: backwards,
        };
        let mut hits: Vec<(Rank, DocAddress)> = if counted_with_page {
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
        let docs: Vec<DocAddress> = hits.iter().map(|(_, d)| *d).collect();
        let ranks: Vec<Rank> = hits.into_iter().map(|(r, _)| r).collect();

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

        let keys = self.doc_versions(&planner, &ranks, &docs)?;
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

    /// `(type, id, version)` of each ranked document (its rank holds its type and id).
    fn doc_versions(
        &self,
        planner: &Planner<'_>,
        ranks: &[Rank],
        docs: &[DocAddress],
    ) -> Result<Vec<(String, String, i64)>, SearchError> {
        let mut out = Vec::with_capacity(docs.len());
        for (rank, d) in ranks.iter().zip(docs) {
            let (t, id) = match rank.key() {
                Some(key) => key,
                None => planner.key_of(*d)?,
            };
            let columns = self
                .index
                .columns
                .get(planner.searcher.segment_reader(d.segment_ord));
            let version = columns
                .version
                .as_ref()
                .and_then(|c| c.first(d.doc_id))
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
            let frontier_keys = planner.keys_of(&frontier)?;
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
                            &join(&[code, &local(t, id)]),
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
                let docs: Vec<DocAddress> = hits.into_iter().map(|(_, d)| d).collect();
                found.extend(planner.keys_of(&docs)?);
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
            let iterating = q.includes.iter().chain(&q.revincludes).any(|i| i.iterate);
            let mut next_frontier = Vec::new();
            for h in heads.into_iter().filter(|h| !h.deleted) {
                if iterating {
                    next_frontier.extend(self.docs_for(planner, &h.resource_type, &h.id)?);
                }
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
        let key = Term::from_field_text(self.index.fields.key, &local(t, id));
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

/// A compartment clause for `Patient/{id}/{type}` searches.
pub fn compartment_clause(patient_id: &str) -> Clause {
    Clause::Compartment(format!("Patient/{patient_id}"))
}
