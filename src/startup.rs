//! Builds the whole application from a `Settings` value. `shcr serve`, `shcr demo` and the tests
//! all start it through `Application::build`, with port 0 for a free port.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::access::dev_issuer::DevIssuer;
use crate::access::{AccessPolicy, TokenVerifier};
use crate::api::health::Readiness;
use crate::api::{self, AppState};
use crate::audit::Audit;
use crate::config::Settings;
use crate::interactions::Repository;
use crate::search::indexer::{IndexOptions, SearchIndex};
use crate::search::params::Registry;
use crate::store::Store;

pub struct Application {
    port: u16,
    origin: String,
    issuer: String,
    dev_issuer: Option<Arc<DevIssuer>>,
    store: Store,
    readiness: Readiness,
    search: Arc<SearchIndex>,
    server: Server,
    /// Inbound messaging, NATS consumer and subscription delivery (src/events).
    events: crate::events::Runtime,
    /// The local audit journal, when `audit.journal_dir` is set.
    journal: Option<crate::audit::journal::Journals>,
}

/// The built-in search parameters, parsed and compiled once per process.
fn builtin_registry() -> anyhow::Result<Arc<Registry>> {
    static BUILTIN: std::sync::OnceLock<Arc<Registry>> = std::sync::OnceLock::new();
    if let Some(r) = BUILTIN.get() {
        return Ok(r.clone());
    }
    let registry = Arc::new(Registry::load(None).context("loading search parameters")?);
    Ok(BUILTIN.get_or_init(|| registry).clone())
}

/// The host clients on this machine use to reach a listener bound to `host`.
fn connect_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other,
    }
}

impl Application {
    /// Connects to the database, applies migrations and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        let url = settings.require_database_url()?;
        let store = Store::connect(url, settings.db_max_connections)
            .await
            .context("connecting to PostgreSQL")?;
        store
            .migrate()
            .await
            .context("applying database migrations")?;
        Self::build_with_store(settings, store).await
    }

    pub async fn build_with_store(settings: Settings, store: Store) -> anyhow::Result<Application> {
        settings.validate()?;
        // Parse the R4 definitions now rather than on the first write.
        crate::validation::load_definitions();
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        let local_origin = format!("http://{}:{port}", connect_host(&settings.host));
        let origin = settings
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| local_origin.clone());
        let base_url = format!("{origin}/fhir");

        let dev_issuer = if settings.dev_issuer.enabled {
            Some(Arc::new(DevIssuer::load_or_create(
                &settings.dev_issuer.key_file,
            )?))
        } else {
            None
        };
        let issuer = match (&settings.auth.issuer, &dev_issuer) {
            (Some(issuer), _) => issuer.clone(),
            (None, Some(_)) => format!("{local_origin}/dev-issuer"),
            (None, None) => unreachable!("validated: an issuer is configured"),
        };
        if dev_issuer.is_some() {
            tracing::warn!(%issuer, "development token issuer enabled: never use in production");
        }
        let verifier = Arc::new(TokenVerifier::new(issuer.clone(), &settings.auth));
        let readiness = Readiness::default();
        let registry = match &settings.search_params_dir {
            Some(dir) => Arc::new(Registry::load(Some(dir)).context("loading search parameters")?),
            None => builtin_registry()?,
        };
        for (url, why) in registry.unsupported() {
            tracing::warn!(parameter = %url, reason = %why, "search parameter not supported");
        }
        let search = crate::search::indexer::start(
            store.clone(),
            registry.clone(),
            IndexOptions {
                dir: settings.index_dir.clone(),
                base: base_url.clone(),
            },
        )
        .await
        .context("opening the search index")?;
        let access = Arc::new(
            AccessPolicy::load(
                settings.access.policy_dir.as_deref(),
                settings.access.enforce,
            )
            .await
            .context("loading the access policy (consent-policies)")?,
        );
        if !settings.access.enforce {
            tracing::warn!("access policy enforcement is OFF: benchmarking only, never in service");
        }
        let repository = Repository::with_labels(store.clone(), access.labels())
            .with_compartments(registry.clone());
        let lag_source = search.clone();
        let events = crate::events::Runtime::start(
            &settings,
            repository.clone(),
            verifier.clone(),
            &base_url,
            access.clone(),
            move || lag_source.lag_seconds(),
        )
        .await
        .context("starting events (messaging, NATS, subscriptions)")?;
        let events_state = web::Data::from(events.state.clone());
        let governance = Arc::new(
            crate::governance::Governance::new(&settings, store.pool().clone())
                .context("loading the API product rules")?,
        );
        if governance.directory.auto_register() {
            tracing::warn!("unknown API clients are registered on first use: development only");
        }
        crate::governance::freshness::start(search.clone());
        let capabilities = Arc::new(api::capabilities::capability_statement(
            &base_url,
            &issuer,
            &registry,
            &governance.product,
            &governance.profiles,
        ));
        // The journal is opened in database mode too, to ship what a journal run left behind.
        let journal = match (&settings.audit.journal_dir, settings.access.audit) {
            (Some(dir), true) => Some(
                crate::audit::journal::Journals::open(
                    dir,
                    settings.audit.journal_lanes,
                    settings.audit.segment_bytes,
                    store.clone(),
                )
                .await
                .context("opening the audit journal")?,
            ),
            _ => None,
        };
        if let Some(journal) = &journal {
            let (journal, stuck) = (
                journal.clone(),
                std::time::Duration::from_secs(settings.audit.ship_stuck_seconds),
            );
            readiness.register(
                "audit-journal",
                Arc::new(move || {
                    let result = journal.check(stuck);
                    Box::pin(async move { result }) as futures_util::future::BoxFuture<'static, _>
                }),
            );
        }
        let audit = match (settings.audit.durability()?, &journal) {
            (crate::config::AuditDurability::Journal, Some(journal)) => {
                tracing::info!(dir = %settings.audit.journal_dir.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
                    lanes = settings.audit.journal_lanes,
                    "audit rows are durable in the local journal before answers leave");
                Audit::journalled(store.clone(), journal.writer())
            }
            _ => Audit::new(store.clone()),
        };
        let state = web::Data::new(AppState {
            repository,
            access,
            audit: settings.access.audit.then_some(audit),
            capability_statement: capabilities.to_string(),
            capabilities,
            governance,
            search: search.clone(),
            base_url,
            max_body_bytes: settings.max_body_bytes,
            verifier,
            dev_issuer: dev_issuer.clone(),
            readiness: readiness.clone(),
        });

        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(events_state.clone())
                .wrap(from_fn(api::middleware::pretty))
                .wrap(from_fn(api::middleware::request_id))
                .configure(api::configure)
                .default_service(web::to(api::rest::not_found))
        })
        .listen(listener)?;
        if let Some(workers) = settings.workers {
            server = server.workers(workers);
        }
        let server = server.disable_signals().run();
        tracing::info!(port, %origin, "listening");
        Ok(Application {
            port,
            origin,
            issuer,
            dev_issuer,
            store,
            readiness,
            search,
            server,
            events,
            journal,
        })
    }

    /// The local audit journal, if configured.
    pub fn journal(&self) -> Option<&crate::audit::journal::Journals> {
        self.journal.as_ref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://host:port` (or the configured public URL).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn base_url(&self) -> String {
        format!("{}/fhir", self.origin)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn dev_issuer(&self) -> Option<Arc<DevIssuer>> {
        self.dev_issuer.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where components add `/readyz` checks besides the database, migrations and index.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn search(&self) -> Arc<SearchIndex> {
        self.search.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The events runtime: platform events, the NATS client, the inbound path.
    pub fn events(&self) -> &crate::events::Runtime {
        &self.events
    }

    /// Serves until the server is stopped, then stops the background work (in-flight messages
    /// finish; unacknowledged ones are redelivered to whichever replica runs next).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.events.stop().await;
        // Answers have all left; ship what they journalled so the chain is complete now
        // rather than at the next start (which ships whatever this leaves).
        if let Some(journal) = &self.journal
            && !journal.drain(std::time::Duration::from_secs(10)).await
        {
            tracing::warn!(
                "audit journal not fully shipped at shutdown; the next start ships the rest"
            );
        }
        result
    }
}
