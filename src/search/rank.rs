//! Result order: the sort keys of a search, then type and id, so every document has one place
//! and a cursor can say where a page ended. Ranking happens inside each segment on cheap keys
//! (integers and the term ordinals of string columns); only a page's documents are turned into
//! the strings a cursor and the next segment's results are compared with.

use std::cmp::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{BytesColumn, Column, StrColumn};
use tantivy::query::Query;
use tantivy::query::doc_predicate_query::{DocPredicateQuery, FunctionPredicate};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use super::columns::{ColumnCache, SegmentColumns};
use super::query::SortKey;

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
            let o = ranked(a.as_ref(), b.as_ref(), desc);
            if o != Ordering::Equal {
                return Some(o);
            }
        }
        Some(Ordering::Equal)
    }
}

impl Rank {
    /// The document's type and id (the last two keys).
    pub fn key(&self) -> Option<(String, String)> {
        let [.., t, id] = self.keys.as_slice() else {
            return None;
        };
        let text = |k: &Option<Vec<u8>>| String::from_utf8(k.clone()?).ok();
        Some((text(t)?, text(id)?))
    }
}

/// The order of one key: `Greater` means `a` comes first. Missing values come last.
fn ranked<T: Ord>(a: Option<T>, b: Option<T>, descending: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if descending => a.cmp(&b),
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

pub fn effective_sort(sort: &[SortKey]) -> Vec<SortKey> {
    if sort.is_empty() {
        vec![SortKey {
            code: "_lastUpdated".into(),
            descending: true,
        }]
    } else {
        sort.to_vec()
    }
}

pub fn descending_flags(sort: &[SortKey]) -> Arc<Vec<bool>> {
    let mut flags: Vec<bool> = sort.iter().map(|s| s.descending).collect();
    flags.extend([false, false]);
    Arc::new(flags)
}

pub fn encode_cursor(rank: &Rank, backwards: bool) -> String {
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

pub fn decode_cursor(s: &str, descending: Arc<Vec<bool>>) -> Option<(Rank, bool)> {
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

/// One sort key of a document inside its segment.
#[derive(Clone, Debug)]
enum Key {
    Int(Option<i64>),
    /// A term ordinal of a string column: ordinals order as their strings do within a segment.
    Ord(Option<u64>),
    Bytes(Option<Vec<u8>>),
}

impl Key {
    fn cmp(&self, other: &Key, descending: bool) -> Ordering {
        match (self, other) {
            (Key::Int(a), Key::Int(b)) => ranked(*a, *b, descending),
            (Key::Ord(a), Key::Ord(b)) => ranked(*a, *b, descending),
            (Key::Bytes(a), Key::Bytes(b)) => ranked(a.as_ref(), b.as_ref(), descending),
            // Key kinds follow the sort parameters, the same for every document.
            _ => Ordering::Equal,
        }
    }
}

/// Where a sort key comes from.
enum Source {
    Id,
    LastUpdated,
    Packed { code: String, descending: bool },
}

/// Reads the sort keys of documents in one segment.
struct RankReader {
    sources: Vec<Source>,
    descending: Arc<Vec<bool>>,
    types: Option<StrColumn>,
    ids: Option<StrColumn>,
    last_updated: Option<Column<i64>>,
    packed_sort: Option<BytesColumn>,
}

impl RankReader {
    fn new(columns: &SegmentColumns, sort: &[SortKey], descending: Arc<Vec<bool>>) -> RankReader {
        RankReader {
            sources: sort
                .iter()
                .map(|s| match s.code.as_str() {
                    "_id" => Source::Id,
                    "_lastUpdated" => Source::LastUpdated,
                    code => Source::Packed {
                        code: code.to_string(),
                        descending: s.descending,
                    },
                })
                .collect(),
            descending,
            types: columns.types.clone(),
            ids: columns.ids.clone(),
            last_updated: columns.last_updated.clone(),
            packed_sort: columns.sort.clone(),
        }
    }

    fn ord(col: &Option<StrColumn>, doc: DocId) -> Option<u64> {
        col.as_ref()?.term_ords(doc).next()
    }

    /// The segment-local keys: sort keys, then the type's and the id's ordinals.
    fn keys(&self, doc: DocId) -> Vec<Key> {
        let mut keys = Vec::with_capacity(self.sources.len() + 2);
        let mut packed: Option<Vec<u8>> = None;
        for s in &self.sources {
            keys.push(match s {
                Source::Id => Key::Ord(Self::ord(&self.ids, doc)),
                Source::LastUpdated => {
                    Key::Int(self.last_updated.as_ref().and_then(|c| c.first(doc)))
                }
                Source::Packed { code, descending } => {
                    let buf = packed.get_or_insert_with(|| {
                        let mut buf = Vec::new();
                        if let Some(col) = &self.packed_sort
                            && let Some(ord) = col.term_ords(doc).next()
                        {
                            let _ = col.ord_to_bytes(ord, &mut buf);
                        }
                        buf
                    });
                    Key::Bytes(super::index::unpack_sort_key(buf, code).map(|(min, max)| {
                        if *descending {
                            max.to_vec()
                        } else {
                            min.to_vec()
                        }
                    }))
                }
            });
        }
        keys.push(Key::Ord(Self::ord(&self.types, doc)));
        keys.push(Key::Ord(Self::ord(&self.ids, doc)));
        keys
    }

    /// `Greater`: `a` comes first.
    fn cmp(&self, a: &[Key], b: &[Key]) -> Ordering {
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            let o = a.cmp(b, self.descending.get(i).copied().unwrap_or(false));
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// The strings of term ordinals of one column, read in ordinal order: one pass over the
    /// dictionary's blocks instead of decoding a block per lookup.
    fn texts(col: &Option<StrColumn>, ords: &[Option<u64>]) -> Vec<Option<Vec<u8>>> {
        let mut out = vec![None; ords.len()];
        let Some(col) = col else {
            return out;
        };
        let mut sorted: Vec<(u64, usize)> = ords
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| (o, i)))
            .collect();
        sorted.sort_unstable();
        let just_ords: Vec<u64> = sorted.iter().map(|(o, _)| *o).collect();
        let mut slots = sorted.iter().map(|(_, i)| *i);
        let _ = col
            .dictionary()
            .sorted_ords_to_term_cb(&just_ords, |bytes| {
                if let Some(i) = slots.next() {
                    out[i] = Some(bytes.to_vec());
                }
            });
        out
    }

    /// The comparable ranks of segment-local keys.
    fn ranks(&self, keys: Vec<Vec<Key>>) -> Vec<Rank> {
        let ords_at = |from_end: usize| -> Vec<Option<u64>> {
            keys.iter()
                .map(|k| match &k[k.len() - from_end] {
                    Key::Ord(o) => *o,
                    _ => None,
                })
                .collect()
        };
        let types = Self::texts(&self.types, &ords_at(2));
        let ids = Self::texts(&self.ids, &ords_at(1));
        keys.into_iter()
            .zip(types.into_iter().zip(ids))
            .map(|(keys, (t, id))| {
                let n = keys.len();
                let mut out: Vec<Option<Vec<u8>>> = keys
                    .into_iter()
                    .take(n - 2)
                    .map(|k| match k {
                        Key::Int(v) => v.map(|v| super::terms::hex_i64(v).into_bytes()),
                        Key::Ord(o) => Self::texts(&self.ids, &[o]).pop().flatten(),
                        Key::Bytes(b) => b,
                    })
                    .collect();
                out.push(t);
                out.push(id);
                Rank {
                    keys: out,
                    descending: self.descending.clone(),
                }
            })
            .collect()
    }
}

/// Documents strictly after (or, backwards, strictly before) `cursor` in rank order.
pub fn beyond(
    columns: Arc<ColumnCache>,
    cursor: Rank,
    sort: Vec<SortKey>,
    backwards: bool,
) -> Box<dyn Query> {
    let descending = cursor.descending.clone();
    let cursor = Arc::new(cursor);
    let predicate = FunctionPredicate::from(move |segment: &SegmentReader| {
        let reader = RankReader::new(&columns.get(segment), &sort, descending.clone());
        let cursor = cursor.clone();
        Ok(move |doc: DocId| {
            let r = reader
                .ranks(vec![reader.keys(doc)])
                .pop()
                .expect("one rank");
            match r.partial_cmp(&cursor) {
                Some(Ordering::Less) => !backwards,
                Some(Ordering::Greater) => backwards,
                _ => false,
            }
        })
    });
    Box::new(DocPredicateQuery::from(predicate))
}

/// The first `limit` documents in rank order (or, `reverse`, in reverse rank order: walking
/// back from a cursor, the documents nearest it), best first.
pub struct TopRanked {
    pub columns: Arc<ColumnCache>,
    pub sort: Vec<SortKey>,
    pub descending: Arc<Vec<bool>>,
    pub limit: usize,
    pub reverse: bool,
}

impl TopRanked {
    fn order(&self, a: &Rank, b: &Rank) -> Ordering {
        let o = a.partial_cmp(b).unwrap_or(Ordering::Equal);
        if self.reverse { o.reverse() } else { o }
    }
}

impl Collector for TopRanked {
    type Fruit = Vec<(Rank, DocAddress)>;
    type Child = TopRankedInSegment;

    fn for_segment(
        &self,
        segment_ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopRankedInSegment> {
        Ok(TopRankedInSegment {
            segment_ord,
            reader: RankReader::new(
                &self.columns.get(segment),
                &self.sort,
                self.descending.clone(),
            ),
            limit: self.limit,
            reverse: self.reverse,
            kept: Vec::new(),
            threshold: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<Vec<(Rank, DocAddress)>>,
    ) -> tantivy::Result<Vec<(Rank, DocAddress)>> {
        let mut all: Vec<(Rank, DocAddress)> = fruits.into_iter().flatten().collect();
        all.sort_by(|a, b| self.order(&b.0, &a.0));
        all.truncate(self.limit);
        Ok(all)
    }
}

pub struct TopRankedInSegment {
    segment_ord: SegmentOrdinal,
    reader: RankReader,
    limit: usize,
    reverse: bool,
    kept: Vec<(Vec<Key>, DocId)>,
    /// The worst key kept once `kept` was last cut to `limit`: nothing at or below it can
    /// enter the page.
    threshold: Option<Vec<Key>>,
}

impl TopRankedInSegment {
    /// `Greater`: `a` comes first in the wanted direction.
    fn order(&self, a: &[Key], b: &[Key]) -> Ordering {
        let o = self.reader.cmp(a, b);
        if self.reverse { o.reverse() } else { o }
    }

    /// Keeps the best `limit` documents and remembers the worst of them.
    fn cut(&mut self) {
        let mut kept = std::mem::take(&mut self.kept);
        if kept.len() >= self.limit {
            kept.select_nth_unstable_by(self.limit - 1, |a, b| self.order(&b.0, &a.0));
            kept.truncate(self.limit);
            self.threshold = kept
                .iter()
                .map(|(k, _)| k)
                .min_by(|a, b| self.order(a, b))
                .cloned();
        }
        self.kept = kept;
    }
}

impl SegmentCollector for TopRankedInSegment {
    type Fruit = Vec<(Rank, DocAddress)>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if self.limit == 0 {
            return;
        }
        let keys = self.reader.keys(doc);
        if let Some(t) = &self.threshold
            && self.order(&keys, t) != Ordering::Greater
        {
            return;
        }
        self.kept.push((keys, doc));
        if self.kept.len() >= 2 * self.limit {
            self.cut();
        }
    }

    fn harvest(mut self) -> Vec<(Rank, DocAddress)> {
        if self.limit == 0 {
            return Vec::new();
        }
        self.cut();
        let kept = std::mem::take(&mut self.kept);
        let (keys, docs): (Vec<Vec<Key>>, Vec<DocId>) = kept.into_iter().unzip();
        self.reader
            .ranks(keys)
            .into_iter()
            .zip(docs)
            .map(|(rank, doc)| (rank, DocAddress::new(self.segment_ord, doc)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::TantivyDocument;
    use tantivy::query::AllQuery;

    /// Documents in several segments, many sharing a `_lastUpdated` (a Bundle's resources
    /// do), so type and id decide between them.
    fn index() -> (tantivy::Index, Vec<(i64, String, String)>) {
        let (index, f) = crate::search::index::in_memory();
        let mut writer: tantivy::IndexWriter =
            index.writer_with_num_threads(1, 50_000_000).unwrap();
        let mut expected = Vec::new();
        let types = ["Observation", "Condition", "Patient"];
        for segment in 0..4 {
            for n in 0..40 {
                let i = segment * 40 + n;
                let t = types[(i * 7) % 3];
                let id = format!("{:03}", (i * 37) % 160);
                let updated = ((i * 13) % 9) as i64;
                let mut doc = TantivyDocument::new();
                doc.add_text(f.resource_type, t);
                doc.add_text(f.id, &id);
                doc.add_i64(f.version, 1);
                doc.add_i64(f.last_updated, updated);
                writer.add_document(doc).unwrap();
                expected.push((updated, t.to_string(), id));
            }
            writer.commit().unwrap();
        }
        // Newest first, then type and id ascending.
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        (index, expected)
    }

    fn page(
        searcher: &tantivy::Searcher,
        sort: &[SortKey],
        limit: usize,
        cursor: Option<(Rank, bool)>,
    ) -> Vec<Rank> {
        let descending = descending_flags(sort);
        let backwards = cursor.as_ref().is_some_and(|(_, b)| *b);
        let columns = Arc::new(ColumnCache::default());
        let query: Box<dyn Query> = match cursor {
            Some((rank, backwards)) => beyond(columns.clone(), rank, sort.to_vec(), backwards),
            None => Box::new(AllQuery),
        };
        let collector = TopRanked {
            columns,
            sort: sort.to_vec(),
            descending,
            limit,
            reverse: backwards,
        };
        let mut hits = searcher.search(&query, &collector).unwrap();
        if backwards {
            hits.reverse();
        }
        hits.into_iter().map(|(r, _)| r).collect()
    }

    #[test]
    fn pages_across_segments_follow_the_full_order() {
        let (index, expected) = index();
        let reader = index.reader().unwrap();
        let searcher = reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 4);
        let sort = effective_sort(&[]);
        let keys = |ranks: &[Rank]| -> Vec<(String, String)> {
            ranks.iter().map(|r| r.key().unwrap()).collect()
        };
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(_, t, id)| (t.clone(), id.clone()))
            .collect();

        // Forwards in pages of 7: every document once, in order.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let ranks = page(&searcher, &sort, 7, cursor.clone());
            if ranks.is_empty() {
                break;
            }
            seen.extend(keys(&ranks));
            cursor = Some((ranks.last().unwrap().clone(), false));
        }
        assert_eq!(seen, want);

        // Backwards from the last document: the 7 before it, nearest last.
        let last = page(&searcher, &sort, 200, None).pop().unwrap();
        let before = page(&searcher, &sort, 7, Some((last, true)));
        assert_eq!(keys(&before), want[want.len() - 8..want.len() - 1].to_vec());

        // By id descending: ordinals compare as the ids do, within and across segments.
        let by_id = [SortKey {
            code: "_id".into(),
            descending: true,
        }];
        let mut want_by_id = want.clone();
        want_by_id.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(
            keys(&page(&searcher, &by_id, 11, None)),
            want_by_id[..11].to_vec()
        );
    }
}
