//! `shcr audit verify`: recomputes the hash chain and names the first row that breaks it.

use futures_util::TryStreamExt;
use sqlx::Row;

use super::{AuditRecord, audit_columns, chain_hash};
use crate::store::Store;

/// The outcome of a verification.
#[derive(Debug)]
pub struct Verification {
    pub rows: u64,
    /// Sequence number of the first bad row and why (None: the chain is intact).
    pub first_bad: Option<(i64, String)>,
    /// Hash of the last row: record it outside the database to anchor the chain.
    pub head_hash: Vec<u8>,
}

/// Walks every row in order; `progress` is called with the number of rows checked.
pub async fn verify(
    store: &Store,
    mut progress: impl FnMut(u64),
) -> Result<Verification, sqlx::Error> {
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
            .fetch_one(store.pool())
            .await?;
    let mut rows = sqlx::query(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_event ORDER BY seq"
    ))
    .fetch(store.pool());
    let mut expected_seq = 1i64;
    let mut prev: Vec<u8> = Vec::new();
    let mut checked = 0u64;
    let bad = |seq: i64, why: String, checked: u64, prev: Vec<u8>| Verification {
        rows: checked,
        first_bad: Some((seq, why)),
        head_hash: prev,
    };
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get("seq")?;
        let stored_prev: Vec<u8> = row.try_get("prev_hash")?;
        let stored_hash: Vec<u8> = row.try_get("hash")?;
        let record = AuditRecord::from_row(&row)?;
        if seq != expected_seq {
            let why = if seq > expected_seq {
                format!("row {expected_seq} is missing (deleted?): the next row is {seq}")
            } else {
                format!("row {seq} is out of sequence (inserted?)")
            };
            return Ok(bad(expected_seq.min(seq), why, checked, prev));
        }
        if stored_prev != prev {
            return Ok(bad(
                seq,
                format!(
                    "row {seq} does not follow row {}: its previous hash differs (a row was deleted or inserted before it)",
                    seq - 1
                ),
                checked,
                prev,
            ));
        }
        let micros = super::micros(record.recorded_at.expect("read from the row"));
        let hash = chain_hash(&prev, seq, &record, micros);
        if hash != stored_hash {
            return Ok(bad(
                seq,
                format!("row {seq} was altered: its content does not match its hash"),
                checked,
                prev,
            ));
        }
        prev = stored_hash;
        expected_seq += 1;
        checked += 1;
        if checked.is_multiple_of(10_000) {
            progress(checked);
        }
    }
    progress(checked);
    let last = expected_seq - 1;
    if last != head_seq || (last > 0 && prev != head_hash) {
        let why = if last < head_seq {
            format!(
                "rows {} to {head_seq} are missing (deleted from the end of the chain)",
                last + 1
            )
        } else {
            format!("row {last} is beyond the recorded chain head {head_seq} (inserted?)")
        };
        return Ok(Verification {
            rows: checked,
            first_bad: Some((head_seq.min(last) + 1, why)),
            head_hash: prev,
        });
    }
    Ok(Verification {
        rows: checked,
        first_bad: None,
        head_hash: prev,
    })
}
