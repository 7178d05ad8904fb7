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
use tantivy::query::{ConstScorer, EnableScoring, Explanation, Query, Scorer, Weight};
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

/// Filters already built, by key. Building one makes a term per patient of the organisation
/// (hundreds to thousands of strings and queries) that every search would otherwise make
/// again only to find every segment's bitset cached.
static BUILT: LazyLock<Mutex<HashMap<u64, CachedFilter>>> = LazyLock::new(Default::default);

/// Keys of built filters kept; past this the memo starts again.
const BUILT_MAX: usize = 1024;

impl CachedFilter {
    pub fn new(key: u64, inner: Box<dyn Query>) -> CachedFilter {
        CachedFilter {
            key,
            inner: Arc::from(inner),
        }
    }

    /// The filter under `key`, calling `build` only if none was built under it yet (the
    /// caller's guarantee that one key stands for one filter makes the built one reusable).
    pub fn get_or_build(key: u64, build: impl FnOnce() -> Box<dyn Query>) -> CachedFilter {
        if let Some(f) = BUILT.lock().expect("filter memo").get(&key) {
            return f.clone();
        }
        let f = CachedFilter::new(key, build());
        let mut built = BUILT.lock().expect("filter memo");
        if built.len() >= BUILT_MAX {
            built.clear();
        }
        built.insert(key, f.clone());
        f
    }
}

impl fmt::Debug for CachedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cached(key={}, {:?})", self.key, self.inner)
    }
}

impl Query for CachedFilter {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let Some(searcher) = enable_scoring.searcher() else {
            // No segments to know of (a weight for the schema alone): evaluate as asked.
            return Ok(Box::new(CachedWeight {
                key: self.key,
                known: HashMap::new(),
                // Only membership matters: the inner query is evaluated without scores.
                inner: Some(
                    self.inner
                        .weight(EnableScoring::disabled_from_schema(enable_scoring.schema()))?,
                ),
            }));
        };
        // Every segment's bitset is made here, not when the segment is first scored: a
        // conjunction stops building scorers at its first clause without matches in a
        // segment, so a segment the filter was never scored on would otherwise stay unknown,
        // and every later search would build the inner weight (term lookups, automata) again.
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = CACHE.lock().expect("filter cache");
            for reader in searcher.segment_readers() {
                let id = reader.segment_id();
                match cache.get(&(self.key, id)) {
                    Some(bits) => {
                        known.insert(id, bits.clone());
                    }
                    None => missing.push(reader),
                }
            }
        }
        crate::metrics::FILTER_CACHE
            .with_label_values(&["hit"])
            .inc_by(known.len() as u64);
        if !missing.is_empty() {
            // Only membership matters: the inner query is evaluated without scores.
            let inner = self
                .inner
                .weight(EnableScoring::disabled_from_searcher(searcher))?;
            for reader in missing {
                crate::metrics::FILTER_CACHE
                    .with_label_values(&["miss"])
                    .inc();
                let bits = Arc::new(matches(inner.as_ref(), reader)?);
                CACHE
                    .lock()
                    .expect("filter cache")
                    .insert((self.key, reader.segment_id()), bits.clone());
                known.insert(reader.segment_id(), bits);
            }
        }
        Ok(Box::new(CachedWeight {
            key: self.key,
            known,
            inner: None,
        }))
    }
}

struct CachedWeight {
    key: u64,
    /// The bitset of every segment of the searcher the weight was made for.
    known: HashMap<SegmentId, Arc<BitSet>>,
    /// The inner weight, when the weight was made without a searcher.
    inner: Option<Box<dyn Weight>>,
}

impl CachedWeight {
    fn bits(&self, reader: &SegmentReader) -> tantivy::Result<Arc<BitSet>> {
        let id = reader.segment_id();
        if let Some(bits) = self.known.get(&id) {
            return Ok(bits.clone());
        }
        let Some(inner) = &self.inner else {
            return Err(TantivyError::InternalError(format!(
                "access filter {}: segment {id:?} was not in the searcher the weight was made for",
                self.key
            )));
        };
        Ok(Arc::new(matches(inner.as_ref(), reader)?))
    }
}

/// The documents of the segment `weight` matches.
fn matches(weight: &dyn Weight, reader: &SegmentReader) -> tantivy::Result<BitSet> {
    let mut bits = BitSet::with_max_value(reader.max_doc());
    let mut scorer = weight.scorer(reader, 1.0)?;
    let mut doc = scorer.doc();
    while doc != TERMINATED {
        bits.insert(doc);
        doc = scorer.advance();
    }
    Ok(bits)
}

impl Weight for CachedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(ConstScorer::new(
            SharedBits::new(self.bits(reader)?),
            boost,
        )))
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

/// A cached bitset as a doc set. Shares the bitset: copying it for every search and segment
/// cost an allocation and a copy of max_doc / 8 bytes each time.
struct SharedBits {
    docs: Arc<BitSet>,
    bucket: u32,
    /// The documents of `bucket` not yet returned, one bit each.
    word: u64,
    doc: DocId,
}

/// The 64 documents from `bucket * 64` as bits.
fn bucket_word(docs: &BitSet, bucket: u32) -> u64 {
    u64::from_le_bytes(docs.tinyset(bucket).into_bytes())
}

impl SharedBits {
    fn new(docs: Arc<BitSet>) -> SharedBits {
        let word = if docs.max_value() == 0 {
            0
        } else {
            bucket_word(&docs, 0)
        };
        let mut set = SharedBits {
            docs,
            bucket: 0,
            word,
            doc: 0,
        };
        set.advance();
        set
    }
}

impl DocSet for SharedBits {
    fn advance(&mut self) -> DocId {
        if self.word == 0 {
            let next = if self.docs.max_value() == 0 {
                None
            } else {
                self.docs.first_non_empty_bucket(self.bucket + 1)
            };
            match next {
                Some(bucket) => {
                    self.bucket = bucket;
                    self.word = bucket_word(&self.docs, bucket);
                }
                None => {
                    self.doc = TERMINATED;
                    return TERMINATED;
                }
            }
        }
        let low = self.word.trailing_zeros();
        self.word &= self.word - 1;
        self.doc = self.bucket * 64 + low;
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc >= target {
            return self.doc;
        }
        if target >= self.docs.max_value() {
            self.doc = TERMINATED;
            return TERMINATED;
        }
        let bucket = target / 64;
        if bucket > self.bucket {
            self.bucket = bucket;
            self.word = bucket_word(&self.docs, bucket);
        }
        // Documents below the target in its bucket are skipped.
        self.word &= u64::MAX << (target % 64);
        self.advance()
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.docs.len() as u32
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
    #[test]
    fn every_segment_is_cached_even_where_the_search_matches_nothing() {
        let mut schema = Schema::builder();
        let f = schema.add_text_field("f", STRING);
        let g = schema.add_text_field("g", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Two commits, two segments; "x" only in the first.
        for segment in [[("x", "a"), ("y", "a")], [("y", "a"), ("y", "b")]] {
            for (fv, gv) in segment {
                let mut d = TantivyDocument::new();
                d.add_text(f, fv);
                d.add_text(g, gv);
                writer.add_document(d).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert!(searcher.segment_readers().len() >= 2);
        let key = u64::MAX - 11;
        let filter = CachedFilter::new(
            key,
            Box::new(TermQuery::new(
                Term::from_field_text(g, "a"),
                IndexRecordOption::Basic,
            )),
        );
        let query = tantivy::query::BooleanQuery::new(vec![
            (
                tantivy::query::Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f, "x"),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>,
            ),
            (tantivy::query::Occur::Must, Box::new(filter)),
        ]);
        assert_eq!(searcher.search(&query, &DocSetCollector).unwrap().len(), 1);
        let cache = CACHE.lock().unwrap();
        for reader in searcher.segment_readers() {
            assert!(
                cache.contains_key(&(key, reader.segment_id())),
                "segment {:?} not cached",
                reader.segment_id()
            );
        }
    }

    #[test]
    fn shared_bits_iterate_and_seek_like_the_bitset() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for max in [0u32, 1, 63, 64, 65, 1000, 4096] {
            for density in [0u64, 1, 10, 50, 100] {
                let mut bits = BitSet::with_max_value(max);
                let mut expected = Vec::new();
                for d in 0..max {
                    if rand() % 100 < density {
                        bits.insert(d);
                        expected.push(d);
                    }
                }
                let bits = Arc::new(bits);
                let mut all = Vec::new();
                let mut set = SharedBits::new(bits.clone());
                while set.doc() != TERMINATED {
                    all.push(set.doc());
                    set.advance();
                }
                assert_eq!(all, expected, "max {max} density {density}");
                // Seeks to random increasing targets land on the first document at or after.
                let mut set = SharedBits::new(bits.clone());
                let mut target = 0;
                while target < max + 2 {
                    target += (rand() % 70) as u32;
                    let want = expected
                        .iter()
                        .copied()
                        .find(|d| *d >= target.max(set.doc()))
                        .unwrap_or(TERMINATED);
                    let want = if set.doc() >= target { set.doc() } else { want };
                    assert_eq!(set.seek(target), want, "max {max} target {target}");
                    if want == TERMINATED {
                        break;
                    }
                }
            }
        }
    }
}
