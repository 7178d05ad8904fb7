//! Events: trusts' events in, notifications out.
//!
//! Inbound, a message Bundle arrives by `POST /fhir/$process-message` or on NATS JetStream
//! (`<prefix>.<ODS>.<event>`); both go through `ingest::Ingest`: the sender is authenticated and
//! must be the MessageHeader's sender, every resource is upserted by the sender's own business
//! identifier, stale events are recorded instead of applied, and the message id makes repeats
//! harmless. What cannot be applied goes to the dead-letter store (`shcr dead-letter`).
//!
//! Outbound, topic-based Subscriptions (R4 Backport) are fed from the change feed
//! (`subscriptions`). Platform events and metrics tell operators about dead letters, failing
//! subscriptions and index lag. The event types and topics are data: `events/catalogue.toml`.

pub mod catalogue;
pub mod dead_letter;
pub mod error;
pub mod idempotency;
pub mod inbound;
pub mod ingest;
pub mod message;
pub mod metrics;
pub mod nats;
pub mod platform;
pub mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::TokenVerifier;
use crate::config::Settings;
use crate::interactions::Repository;

pub use catalogue::Catalogue;
pub use error::MessageError;
pub use ingest::{Disposition, Envelope, Ingest, Processed};

use inbound::{Authentication, Inbound};
use platform::Platform;
use subscriptions::{ConfiguredPolicy, PayloadPolicy};

/// What the HTTP handlers of this module need (registered as actix app data).
pub struct EventsState {
    pub ingest: Ingest,
    pub catalogue: Arc<Catalogue>,
    pub policy: Arc<dyn PayloadPolicy>,
    pub base_url: String,
}

/// The background work of the module: NATS consumer, subscription dispatcher and delivery
/// workers, idempotency-key pruning. Stopped through `shutdown`.
pub struct Runtime {
    pub state: Arc<EventsState>,
    pub inbound: Arc<Inbound>,
    pub platform: Platform,
    pub nats: Option<async_nats::Client>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Connects to NATS when configured. The client reconnects by itself; a broker that is down
/// at start-up delays the consumer, it does not stop the server.
pub async fn connect_nats(settings: &Settings) -> anyhow::Result<Option<async_nats::Client>> {
    let Some(url) = &settings.events.nats.url else {
        return Ok(None);
    };
    let client = async_nats::ConnectOptions::new()
        .name("shcr")
        .retry_on_initial_connect()
        .connect(url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("NATS at {url}: {e}"))?;
    Ok(Some(client))
}

/// Builds the inbound path without starting anything (the CLI's dead-letter replay uses it).
pub fn inbound(
    settings: &Settings,
    repository: Repository,
    verifier: Arc<TokenVerifier>,
    catalogue: Arc<Catalogue>,
    base_url: &str,
) -> Inbound {
    // Live messages pass the consumer registry like REST requests (src/governance).
    let clients = Arc::new(crate::governance::directory::Directory::new(
        repository.store().pool().clone(),
        std::time::Duration::from_secs(settings.governance.cache_seconds),
        settings.auto_register_clients(),
    ));
    let ingest = Ingest::new(repository, catalogue, base_url.to_string());
    let authentication = match settings.events.nats.authentication.as_str() {
        "subject" => Authentication::Subject,
        _ => Authentication::Token,
    };
    Inbound::new(
        ingest,
        verifier,
        authentication,
        settings.events.nats.subject_prefix.clone(),
    )
    .with_registry(clients)
}

impl Runtime {
    /// Starts the background tasks this configuration asks for.
    /// `index_lag` reads how far the search index trails the change feed (seconds).
    pub async fn start(
        settings: &Settings,
        repository: Repository,
        verifier: Arc<TokenVerifier>,
        base_url: &str,
        access: Arc<crate::access::AccessPolicy>,
        index_lag: impl Fn() -> f64 + Send + 'static,
    ) -> anyhow::Result<Runtime> {
        let catalogue = Arc::new(Catalogue::load(settings.events.catalogue.as_deref())?);
        let nats = connect_nats(settings).await?;
        let pool = repository.store().pool().clone();
        let platform = Platform::new(
            pool.clone(),
            nats.clone(),
            settings.events.nats.platform_subject_prefix.clone(),
        );
        let policy: Arc<dyn PayloadPolicy> = Arc::new(subscriptions::AccessPayloadPolicy {
            configured: ConfiguredPolicy::new(&settings.events.subscriptions),
            access,
        });
        let inbound = Arc::new(inbound(
            settings,
            repository.clone(),
            verifier,
            catalogue.clone(),
            base_url,
        ));
        let state = Arc::new(EventsState {
            ingest: inbound.ingest().clone(),
            catalogue: catalogue.clone(),
            policy: policy.clone(),
            base_url: base_url.to_string(),
        });
        let (shutdown, watcher) = watch::channel(false);
        let mut tasks = Vec::new();

        if let Some(client) = &nats {
            let consumer = Arc::new(nats::Consumer {
                inbound: inbound.clone(),
                pool: pool.clone(),
                platform: platform.clone(),
                settings: settings.events.nats.clone(),
            });
            tasks.push(tokio::spawn(consumer.run(client.clone(), watcher.clone())));
        }
        let subs = &settings.events.subscriptions;
        if subs.enabled {
            let dispatcher = subscriptions::dispatcher::Dispatcher::new(
                repository.store().clone(),
                catalogue.clone(),
                subs.clone(),
                policy.clone(),
            );
            tasks.push(tokio::spawn(dispatcher.run(watcher.clone())));
            let delivery = Arc::new(subscriptions::delivery::Delivery {
                repository: repository.clone(),
                settings: subs.clone(),
                policy: policy.clone(),
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
                nats: nats.clone(),
                platform: platform.clone(),
                base_url: base_url.to_string(),
            });
            for _ in 0..subs.workers {
                tasks.push(tokio::spawn(delivery.clone().run(watcher.clone())));
            }
        }
        tasks.push(tokio::spawn(platform.clone().watch_index_lag(
            index_lag,
            settings.events.index_lag_alert_seconds,
            watcher.clone(),
        )));
        let retention = settings.events.idempotency_retention_hours;
        let mut prune_stop = watcher.clone();
        let prune_pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match idempotency::prune(&prune_pool, retention).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "old idempotency keys removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "idempotency pruning failed"),
                }
                dead_letter::refresh_pending_gauge(&prune_pool).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = prune_stop.changed() => break,
                }
            }
        }));
        Ok(Runtime {
            state,
            inbound,
            platform,
            nats,
            shutdown,
            tasks,
        })
    }

    /// Asks every task to stop and waits (bounded) for in-flight work to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        if let Some(client) = self.nats {
            let _ = client.flush().await;
        }
    }

    /// A handle that signals shutdown without waiting.
    pub fn shutdown_signal(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}
