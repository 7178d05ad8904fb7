//! The fast-field columns searches read, opened once per segment. Opening a string or bytes
//! column loads its dictionary's index, which cost more than the lookups a search then makes
//! (a profile of the search mix put ~10% of the server's CPU in opening columns); segments
//! never change once written, so their columns are kept until the segment leaves the index.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tantivy::columnar::{BytesColumn, Column, StrColumn};
use tantivy::index::SegmentId;
use tantivy::{Searcher, SegmentReader};

pub struct SegmentColumns {
    pub types: Option<StrColumn>,
    pub ids: Option<StrColumn>,
    pub last_updated: Option<Column<i64>>,
    pub version: Option<Column<i64>>,
    pub packed: Option<BytesColumn>,
    pub sort: Option<BytesColumn>,
}

impl SegmentColumns {
    fn open(segment: &SegmentReader) -> SegmentColumns {
        let ff = segment.fast_fields();
        SegmentColumns {
            types: ff.str("type").ok().flatten(),
            ids: ff.str("id").ok().flatten(),
            last_updated: ff.i64("last_updated").ok(),
            version: ff.i64("version").ok(),
            packed: ff.bytes("packed").ok().flatten(),
            sort: ff.bytes("sort").ok().flatten(),
        }
    }

    /// The packed values blob of a document (empty when it has none).
    pub fn packed_bytes(&self, doc: tantivy::DocId, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        match &self.packed {
            Some(col) => match col.term_ords(doc).next() {
                Some(ord) => col.ord_to_bytes(ord, buf).unwrap_or(false),
                None => false,
            },
            None => false,
        }
    }
}

#[derive(Default)]
pub struct ColumnCache {
    by_segment: RwLock<HashMap<SegmentId, Arc<SegmentColumns>>>,
}

impl ColumnCache {
    pub fn get(&self, segment: &SegmentReader) -> Arc<SegmentColumns> {
        let id = segment.segment_id();
        if let Some(c) = self.by_segment.read().expect("column cache").get(&id) {
            return c.clone();
        }
        let columns = Arc::new(SegmentColumns::open(segment));
        self.by_segment
            .write()
            .expect("column cache")
            .insert(id, columns.clone());
        columns
    }

    /// Forgets segments the searcher no longer holds (merged away or deleted), so their files
    /// are not kept mapped. Called after each reader reload.
    pub fn keep_only(&self, searcher: &Searcher) {
        let live: Vec<SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(|s| s.segment_id())
            .collect();
        self.by_segment
            .write()
            .expect("column cache")
            .retain(|id, _| live.contains(id));
    }
}
