//! Access filters kept as per-segment bitsets between searches.
//!
//! A clinician's search filter names every patient their organisation has a relationship
//! with: a term set of thousands of compartments whose postings tantivy would otherwise
//! union again on every search. Segments never change their documents (deletions live in a
//! separate alive-bitset that collectors apply), so the union for one set of access facts and
//! one segment can be kept and reused until the facts change, which gives them a new key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use tantivy::index::SegmentId;
use tantivy::query::{
    BitSetDocSet, ConstScorer, EnableScoring, Explanation, Query, Scorer, Weight,
};
use tantivy::{BitSet, DocId, DocSet, Score, SegmentReader, TERMINATED, TantivyError};

/// Bytes of bitsets kept in all (each is max_doc / 8 bytes: 125 kB per million documents).
/// Facts change with every fact-bearing write, so old keys pile up under a write load: past
/// this the cache starts again.
const MAX_BYTES: usize = 64 << 20;

type Key = (u64, SegmentId);

#[derive(Default)]
struct Cache {
    bits: HashMap<Key, Arc<BitSet>>,
    bytes: usize,
}

impl Cache {
    fn get(&self, key: &Key) -> Option<&Arc<BitSet>> {
        self.bits.get(key)
    }

    fn insert(&mut self, key: Key, bits: Arc<BitSet>) {
        let size = bits.max_value() as usize / 8 + 64;
        if self.bytes + size > MAX_BYTES {
            self.bits.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.bits.insert(key, bits);
    }

    #[cfg(test)]
    fn contains_key(&self, key: &Key) -> bool {
        self.bits.contains_key(key)
    }
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

/// `inner`, with its matches per segment remembered under `key`. The caller guarantees that
/// one key always stands for the same filter.
#[derive(Clone)]
pub struct CachedFilter {
    key: u64,
    inner: Arc<dyn Query>,
}

impl CachedFilter {
    pub fn new(key: u64, inner: Box<dyn Query>) -> CachedFilter {
        CachedFilter {
            key,
            inner: Arc::from(inner),
        }
    }
}

impl fmt::Debug for CachedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cached(key={}, {:?})", self.key, self.inner)
    }
}

impl Query for CachedFilter {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        // Building the inner weight is itself costly (term lookups, automata): skip it when
        // every segment of the searcher is cached.
        if let Some(searcher) = enable_scoring.searcher() {
            let cache = CACHE.lock().expect("filter cache");
            let known: Option<HashMap<SegmentId, Arc<BitSet>>> = searcher
                .segment_readers()
                .iter()
                .map(|r| {
                    let id = r.segment_id();
                    cache.get(&(self.key, id)).map(|b| (id, b.clone()))
                })
                .collect();
            if let Some(known) = known {
                return Ok(Box::new(CachedWeight {
                    key: self.key,
                    known,
                    inner: None,
                }));
            }
        }
        // Only membership matters: the inner query is evaluated without scores.
        let unscored = match enable_scoring.searcher() {
            Some(searcher) => EnableScoring::disabled_from_searcher(searcher),
            None => EnableScoring::disabled_from_schema(enable_scoring.schema()),
        };
        Ok(Box::new(CachedWeight {
            key: self.key,
            known: HashMap::new(),
            inner: Some(self.inner.weight(unscored)?),
        }))
    }
}

struct CachedWeight {
    key: u64,
    /// Bitsets found when the weight was made.
    known: HashMap<SegmentId, Arc<BitSet>>,
    /// The inner weight, unless every segment was known.
    inner: Option<Box<dyn Weight>>,
}

impl CachedWeight {
    fn bits(&self, reader: &SegmentReader) -> tantivy::Result<Arc<BitSet>> {
        let id = reader.segment_id();
        if let Some(bits) = self.known.get(&id) {
            crate::metrics::FILTER_CACHE
                .with_label_values(&["hit"])
                .inc();
            return Ok(bits.clone());
        }
        let key = (self.key, id);
        if let Some(bits) = CACHE.lock().expect("filter cache").get(&key) {
            crate::metrics::FILTER_CACHE
                .with_label_values(&["hit"])
                .inc();
            return Ok(bits.clone());
        }
        let Some(inner) = &self.inner else {
            return Err(TantivyError::InternalError(format!(
                "access filter: segment {id:?} was not in the searcher the weight was made for"
            )));
        };
        crate::metrics::FILTER_CACHE
            .with_label_values(&["miss"])
            .inc();
        let mut bits = BitSet::with_max_value(reader.max_doc());
        let mut scorer = inner.scorer(reader, 1.0)?;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            bits.insert(doc);
            doc = scorer.advance();
        }
        let bits = Arc::new(bits);
        CACHE
            .lock()
            .expect("filter cache")
            .insert(key, bits.clone());
        Ok(bits)
    }
}

impl Weight for CachedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let bits = (*self.bits(reader)?).clone();
        Ok(Box::new(ConstScorer::new(BitSetDocSet::from(bits), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        if self.bits(reader)?.contains(doc) {
            Ok(Explanation::new("access filter", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "Document #({doc}) does not match"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::DocSetCollector;
    use tantivy::query::TermQuery;
    use tantivy::schema::{IndexRecordOption, STRING, Schema};
    use tantivy::{Index, IndexWriter, TantivyDocument, Term};

    #[test]
    fn a_cached_filter_matches_what_its_query_matches() {
        let mut schema = Schema::builder();
        let f = schema.add_text_field("f", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for v in ["a", "b", "a", "c", "a"] {
            let mut d = TantivyDocument::new();
            d.add_text(f, v);
            writer.add_document(d).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let query = || -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(f, "a"),
                IndexRecordOption::Basic,
            ))
        };
        let plain = searcher.search(&query(), &DocSetCollector).unwrap();
        let key = u64::MAX - 7;
        let cached = CachedFilter::new(key, query());
        assert_eq!(searcher.search(&cached, &DocSetCollector).unwrap(), plain);
        // Again, now from the cache: the same documents.
        assert_eq!(searcher.search(&cached, &DocSetCollector).unwrap(), plain);
        assert_eq!(plain.len(), 3);
        let segment = searcher.segment_readers()[0].segment_id();
        assert!(CACHE.lock().unwrap().contains_key(&(key, segment)));
    }
}
