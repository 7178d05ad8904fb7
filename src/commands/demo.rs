//! `shcr demo`: everything on one machine. A private PostgreSQL in the data folder (unless
//! DATABASE_URL is set), a synthetic population imported on first run, the development issuer,
//! and tokens printed with a ready curl line. Ctrl-C stops the server and PostgreSQL cleanly.

use std::path::PathBuf;

use crate::access::dev_issuer::{Grant, TokenClaims};
use crate::config::Settings;
use crate::demo::postgres::EmbeddedPostgres;
use crate::generate::{GenerateOptions, write_to_dir};
use crate::import::{collect_files, import_files};
use crate::interactions::Repository;
use crate::startup::Application;
use crate::store::Author;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder for the private database, the dev issuer key and the generated population.
    #[arg(long, default_value = ".shcr")]
    pub data_dir: PathBuf,
    /// HTTP port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Persons in the synthetic population loaded on first run.
    #[arg(long, default_value_t = 300)]
    pub persons: usize,
    #[arg(long, default_value_t = 5)]
    pub trusts: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let embedded = match &settings.database_url {
        Some(_) => {
            println!("using the database in DATABASE_URL");
            None
        }
        None => {
            println!(
                "starting a private PostgreSQL in {}",
                data_dir.join("pg").display()
            );
            let pg = EmbeddedPostgres::start(&data_dir.join("pg")).await?;
            settings.database_url = Some(pg.database_url());
            Some(pg)
        }
    };
    let result = serve_demo(settings, &args, &data_dir).await;
    if let Some(pg) = embedded {
        println!("stopping PostgreSQL");
        pg.stop().await?;
    }
    result
}

async fn serve_demo(
    mut settings: Settings,
    args: &DemoArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    settings.port = args.port;
    settings.dev_issuer.enabled = true;
    settings.dev_issuer.key_file = data_dir.join("dev-issuer-key.pem");
    settings.index_dir = Some(data_dir.join("index"));
    let app = Application::build(settings.clone()).await?;
    let repo = Repository::new(app.store().clone());

    let counts = app.store().count_current().await?;
    if counts.iter().all(|(t, _)| t != "Patient") {
        let population = data_dir.join("population");
        if population.exists() {
            std::fs::remove_dir_all(&population)?;
        }
        let opts = GenerateOptions {
            persons: args.persons,
            trusts: args.trusts,
            seed: args.seed,
            ..GenerateOptions::default()
        };
        let bar = super::import::progress_bar(opts.persons as u64, "generating persons");
        let summary = write_to_dir(&opts, &population, &bar)?;
        bar.finish_and_clear();
        println!(
            "generated {} persons seen by {} trusts: {} bundles, {} resources",
            summary.persons,
            summary.trusts.len(),
            summary.bundles,
            summary.resources
        );
        let files = collect_files(std::slice::from_ref(&population))?;
        let bar = super::import::progress_bar(files.len() as u64, "importing bundles");
        let author = Author {
            kind: "system",
            id: "shcr-demo".into(),
            org: None,
            request_id: None,
        };
        let report = import_files(&repo, &author, files, 4, &bar).await;
        println!(
            "imported {} resources from {} files ({} files with errors)",
            report.written, report.files, report.files_failed
        );
        for e in report.errors.iter().take(10) {
            eprintln!("  {e}");
        }
    } else {
        println!("reusing the data already in the database");
    }

    // The clients the printed tokens belong to, registered as a real deployment would have them.
    crate::governance::seed_demo_clients(app.store().pool()).await?;
    let issuer = app.dev_issuer().expect("dev issuer enabled");
    let audience = settings.auth.audience.clone();
    let ttl = 12 * 3600;
    // The clinician works at the trust that sees the most patients, so the demo shows records.
    let clinician_org = crate::access::facts::busiest_org(app.store(), None)
        .await?
        .unwrap_or_else(|| "RX1".into());
    let clinician = issuer.mint(&TokenClaims::new(
        app.issuer(),
        &audience,
        &Grant::User {
            user_id: "555000000001".into(),
            name: Some("Dr Demo Clinician".into()),
            role_code: "S8000:G8000:R8000".into(),
            org: clinician_org.clone(),
            activities: vec!["B0360".into(), "B0380".into()],
            scopes: vec!["user/*.rs".into()],
        },
        ttl,
    ))?;
    let trust = issuer.mint(&TokenClaims::new(
        app.issuer(),
        &audience,
        &Grant::System {
            client_id: "rx1-pas".into(),
            ods_code: "RX1".into(),
            scopes: vec!["system/*.cruds".into()],
        },
        ttl,
    ))?;
    let sample: Option<String> = sqlx::query_scalar(
        "SELECT id FROM resource_head WHERE resource_type = 'Patient' AND NOT deleted ORDER BY id LIMIT 1",
    )
    .fetch_optional(app.store().pool())
    .await?;
    let base = app.base_url();
    println!();
    println!("shcr is running at {base}  (CapabilityStatement: {base}/metadata)");
    println!(
        "developer portal: {}/docs  (registered clients: rx1-pas, {})",
        app.origin(),
        crate::access::dev_issuer::DEV_PORTAL_CLIENT
    );
    println!();
    println!(
        "clinician token (R8000 at {clinician_org}, 12 h):\n  export CLINICIAN_TOKEN={clinician}"
    );
    println!("trust system token (RX1, 12 h):\n  export TRUST_TOKEN={trust}");
    println!();
    if let Some(id) = sample {
        println!(
            "try:\n  curl -H \"Authorization: Bearer $CLINICIAN_TOKEN\" {base}/Patient/{id}?_pretty=true"
        );
    }
    println!(
        "  curl -H \"Authorization: Bearer $CLINICIAN_TOKEN\" '{base}/_history?_count=5&_pretty=true'"
    );
    println!();
    println!(
        "Ctrl-C stops shcr and its PostgreSQL; the next run reuses the data in {}",
        data_dir.display()
    );

    let handle = app.handle();
    let search = app.search();
    let server = tokio::spawn(app.run_until_stopped());
    super::serve::shutdown_signal().await;
    println!("stopping shcr");
    handle.stop(true).await;
    server.await??;
    search.shutdown().await;
    Ok(())
}
