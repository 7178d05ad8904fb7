//! `shcr import`: loads FHIR Bundles and resources from files and folders (`.json`, `.ndjson`)
//! through the same interaction code as the REST API.
//!
//! Files whose conditional references point at resources another file creates (Synthea patient
//! bundles refer to its practitioner file) are retried after the rest, so file order does not
//! matter. A bad file is reported with its path and entry and the import carries on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::fhir::comments::strip_comments;
use crate::fhir::outcome::IssueType;
use crate::interactions::bundle::BundleResults;
use crate::interactions::{EntryAction, EntryRequest, Error, Repository, Target};
use crate::store::Author;

/// Lines of an ndjson file written per transaction.
const NDJSON_CHUNK: usize = 500;

#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub files: usize,
    pub files_failed: usize,
    /// Entries written (created or updated).
    pub written: usize,
    /// Entries that matched existing data and changed nothing.
    pub unchanged: usize,
    /// `path: location: message` for every problem.
    pub errors: Vec<String>,
}

impl ImportReport {
    fn merge(&mut self, other: FileResult) {
        self.files += 1;
        self.written += other.written;
        self.unchanged += other.unchanged;
        if !other.errors.is_empty() {
            self.files_failed += 1;
            self.errors.extend(other.errors);
        }
    }
}

#[derive(Debug, Default)]
struct FileResult {
    written: usize,
    unchanged: usize,
    errors: Vec<String>,
    /// Failed only because a conditional reference had no match yet: worth a second pass.
    retry: bool,
}

/// Every `.json`/`.ndjson` file under the given paths, sorted for a stable order.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for entry in entries {
                walk(&entry, out)?;
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json") | Some("ndjson")
        ) {
            out.push(path.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
        walk(path, &mut out)?;
    }
    Ok(out)
}

fn describe(path: &Path, error: &Error) -> Vec<String> {
    error
        .issues()
        .iter()
        .filter(|i| i.is_error())
        .map(|i| match &i.location {
            Some(loc) => format!("{}: {loc}: {}", path.display(), i.diagnostics),
            None => format!("{}: {}", path.display(), i.diagnostics),
        })
        .collect()
}

fn is_missing_reference(error: &Error) -> bool {
    error.issues().iter().any(|i| {
        i.code == IssueType::NotFound && i.diagnostics.starts_with("conditional reference")
    })
}

/// A standalone resource keeps its id (update-as-create) so re-imports converge.
fn resource_request(resource: Value) -> Result<EntryRequest, String> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("no resourceType")?
        .to_string();
    let action = match resource.get("id").and_then(Value::as_str) {
        Some(id) => EntryAction::Update {
            target: Target::Id(id.to_string()),
            resource: resource.clone(),
            if_match: None,
        },
        None => EntryAction::Create {
            resource,
            if_none_exist: None,
        },
    };
    Ok(EntryRequest {
        resource_type,
        full_url: None,
        action,
    })
}

fn count_outcomes(results: &BundleResults, result: &mut FileResult, path: &Path) {
    for outcome in &results.entries {
        match outcome {
            Ok(o) if o.written => result.written += 1,
            Ok(_) => result.unchanged += 1,
            Err(e) => result.errors.extend(describe(path, e)),
        }
    }
}

async fn import_json(repo: &Repository, author: &Author, path: &Path, value: Value) -> FileResult {
    let mut result = FileResult::default();
    let is_processable_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && matches!(
            value.get("type").and_then(Value::as_str),
            Some("transaction" | "batch")
        );
    if is_processable_bundle {
        match repo.process_bundle(&value, author, "").await {
            Ok(results) => count_outcomes(&results, &mut result, path),
            Err(e) => {
                result.retry = is_missing_reference(&e);
                result.errors = describe(path, &e);
            }
        }
        return result;
    }
    match resource_request(value) {
        Err(e) => result.errors.push(format!("{}: {e}", path.display())),
        Ok(request) => match repo
            .execute_atomic(std::slice::from_ref(&request), author)
            .await
        {
            Ok(outcomes) => {
                if outcomes.iter().any(|o| o.written) {
                    result.written += 1;
                } else {
                    result.unchanged += 1;
                }
            }
            Err(f) => {
                result.retry = is_missing_reference(&f.error);
                result.errors = describe(path, &f.error);
            }
        },
    }
    result
}

async fn import_ndjson(repo: &Repository, author: &Author, path: &Path, text: &str) -> FileResult {
    let mut result = FileResult::default();
    let mut chunk: Vec<(usize, EntryRequest)> = Vec::new();
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let flush = async |chunk: &mut Vec<(usize, EntryRequest)>, result: &mut FileResult| {
        if chunk.is_empty() {
            return;
        }
        let requests: Vec<EntryRequest> = chunk.iter().map(|(_, r)| r.clone()).collect();
        match repo.execute_atomic(&requests, author).await {
            Ok(outcomes) => result.written += outcomes.len(),
            // Isolate the bad lines: write the chunk line by line.
            Err(_) => {
                for (line, request) in chunk.iter() {
                    match repo
                        .execute_atomic(std::slice::from_ref(request), author)
                        .await
                    {
                        Ok(_) => result.written += 1,
                        Err(f) => result.errors.extend(
                            describe(path, &f.error)
                                .into_iter()
                                .map(|e| e.replacen(": ", &format!(":{}: ", line + 1), 1)),
                        ),
                    }
                }
            }
        }
        chunk.clear();
    };
    for (n, line) in lines {
        match serde_json::from_str::<Value>(line)
            .map(|mut v| {
                strip_comments(&mut v);
                v
            })
            .map_err(|e| e.to_string())
            .and_then(resource_request)
        {
            Ok(request) => chunk.push((n, request)),
            Err(e) => result
                .errors
                .push(format!("{}:{}: {e}", path.display(), n + 1)),
        }
        if chunk.len() >= NDJSON_CHUNK {
            flush(&mut chunk, &mut result).await;
        }
    }
    flush(&mut chunk, &mut result).await;
    result
}

/// The writer of a file: a generated population keeps each trust's bundles in a folder named by
/// its ODS code (`DIR/RX1/0001-….json`), and each trust may only write under its own code, so
/// those files are written as that trust. Anything else is written as `author`.
fn author_for(path: &Path, author: &Author) -> Author {
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let looks_like_ods = (3..=10).contains(&folder.len())
        && folder
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && folder.bytes().any(|b| b.is_ascii_uppercase());
    match crate::access::OdsCode::parse(folder) {
        Some(ods) if looks_like_ods => Author {
            org: Some(ods.to_string()),
            ..author.clone()
        },
        _ => author.clone(),
    }
}

async fn import_file(repo: &Repository, author: &Author, path: &Path) -> FileResult {
    let author = &author_for(path, author);
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) => {
            return FileResult {
                errors: vec![format!("{}: cannot read: {e}", path.display())],
                ..Default::default()
            };
        }
    };
    if path.extension().and_then(|e| e.to_str()) == Some("ndjson") {
        return import_ndjson(repo, author, path, &text).await;
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(mut value) => {
            strip_comments(&mut value);
            import_json(repo, author, path, value).await
        }
        Err(e) => FileResult {
            errors: vec![format!(
                "{}:{}:{}: not valid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            )],
            ..Default::default()
        },
    }
}

/// Imports `files` with `parallel` files in flight.
pub async fn import_files(
    repo: &Repository,
    author: &Author,
    files: Vec<PathBuf>,
    parallel: usize,
    progress: &ProgressBar,
) -> ImportReport {
    progress.set_length(files.len() as u64);
    let report = Arc::new(Mutex::new(ImportReport::default()));
    let deferred = Arc::new(Mutex::new(Vec::new()));
    futures_util::stream::iter(files)
        .for_each_concurrent(parallel.max(1), |path| {
            let report = report.clone();
            let deferred = deferred.clone();
            async move {
                let result = import_file(repo, author, &path).await;
                if result.retry {
                    deferred.lock().await.push(path);
                } else {
                    report.lock().await.merge(result);
                    progress.inc(1);
                }
            }
        })
        .await;
    // Second pass, in order: these referred to resources other files have now created.
    for path in std::mem::take(&mut *deferred.lock().await) {
        let result = import_file(repo, author, &path).await;
        report.lock().await.merge(result);
        progress.inc(1);
    }
    let report = report.lock().await.clone();
    progress.finish_and_clear();
    report
}
