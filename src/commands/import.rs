//! `shcr import PATH…`

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Settings;
use crate::import::{collect_files, import_files};
use crate::interactions::Repository;
use crate::store::{Author, Store};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Files or folders of FHIR JSON (`.json`: a resource or a transaction/batch Bundle;
    /// `.ndjson`: one resource per line).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// ODS code recorded as the writer of the imported data.
    #[arg(long, default_value = "SHCR")]
    pub as_trust: String,
    /// Files imported at the same time.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    bar
}

pub async fn run(settings: Settings, args: ImportArgs) -> anyhow::Result<()> {
    let store = Store::connect(
        settings.require_database_url()?,
        (args.parallel as u32 + 2).max(4),
    )
    .await?;
    store.migrate().await?;
    let repo = Repository::new(store);
    let files = collect_files(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no .json or .ndjson files under the given paths");
    }
    let author = Author {
        kind: "system",
        id: "shcr-import".into(),
        org: Some(args.as_trust.to_ascii_uppercase()),
        request_id: None,
    };
    let started = Instant::now();
    let bar = progress_bar(files.len() as u64, "importing files");
    let report = import_files(&repo, &author, files, args.parallel, &bar).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} files in {secs:.1}s: {} resources written ({:.0}/s), {} unchanged, {} files with errors",
        report.files,
        report.written,
        report.written as f64 / secs.max(0.001),
        report.unchanged,
        report.files_failed
    );
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    if report.files_failed > 0 {
        anyhow::bail!(
            "{} of {} files had errors",
            report.files_failed,
            report.files
        );
    }
    Ok(())
}
