//! One typed configuration, read from an optional TOML file and `SHCR_*` environment variables,
//! validated once at start-up.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL URL. `DATABASE_URL` is honoured too.
    pub database_url: Option<String>,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Public origin clients use, e.g. `https://shcr.example.nhs.uk`; defaults to
    /// `http://{host}:{port}`. The FHIR base is `{public_url}/fhir`.
    pub public_url: Option<String>,
    /// Largest request body accepted (bytes); larger bodies get 413.
    pub max_body_bytes: usize,
    pub db_max_connections: u32,
    /// HTTP worker threads; defaults to the number of cores.
    pub workers: Option<usize>,
    pub auth: AuthSettings,
    pub dev_issuer: DevIssuerSettings,
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// Inbound messaging, NATS JetStream and outbound subscriptions.
    pub events: EventsSettings,
    /// Folder of the local search index; unset keeps it in memory (rebuilt at every start).
    pub index_dir: Option<PathBuf>,
    /// Extra SearchParameter files (Bundles or single resources) loaded after the built-in set.
    pub search_params_dir: Option<PathBuf>,
    /// Identity matching weights and thresholds (the format of `identity/matching.toml`); the
    /// file built into the binary when unset.
    pub identity_matching: Option<PathBuf>,
    /// Read-time access control and audit.
    pub access: AccessConfig,
    /// How an audit row is made durable before the response leaves (`[audit]`).
    pub audit: AuditSettings,
    /// The API as a governed product: consumer registry, throttling, lifecycle, portal.
    pub governance: GovernanceSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Folder holding model.conf, policy.csv, sensitivity.toml and access.toml (reloadable
    /// through `POST /admin/policy/reload`); unset uses the copy built into the binary.
    pub policy_dir: Option<PathBuf>,
    /// Enforce the access policy. Only benchmarks measuring its cost turn this off.
    pub enforce: bool,
    /// Write an audit row per interaction. Only benchmarks measuring its cost turn this off.
    pub audit: bool,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            policy_dir: None,
            enforce: true,
            audit: true,
        }
    }
}

/// `[audit]`: where an audit row is made durable before the response leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// `database`: each request waits for its row's group commit into the PostgreSQL chain.
    /// `journal`: each request waits for its row's group fsync into a local append-only journal
    /// in `journal_dir`; a background task ships the journal into the same chain (IG reports
    /// and AuditEvent searches lag by that shipping delay). Unset: `journal` when `journal_dir`
    /// is set, `database` otherwise.
    pub durability: Option<String>,
    /// The journal's directory: persistent, local, one per process (a lock file refuses a
    /// second process). Also read in `database` mode, to ship what an earlier `journal` run
    /// left behind.
    pub journal_dir: Option<PathBuf>,
    /// Independent journals (`lane-0`, `lane-1`, … in `journal_dir`), each with its own
    /// writer, fsync and shipper: a request goes to the least busy, so it need not wait for
    /// another group's fsync in flight. Each lane ships in statements of its own, so more lanes
    /// cost PostgreSQL more statements; 2 did not shorten the wait measurably on the bench's
    /// machine (BENCHMARKS.md), hence 1 by default.
    pub journal_lanes: usize,
    /// A journal segment is closed and a new one started past this size (bytes); segments are
    /// deleted once fully shipped.
    pub segment_bytes: u64,
    /// `/readyz` reports the journal's shipper as stuck when its oldest unshipped row is older
    /// than this (seconds).
    pub ship_stuck_seconds: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            durability: None,
            journal_dir: None,
            journal_lanes: 1,
            segment_bytes: 64 * 1024 * 1024,
            ship_stuck_seconds: 30,
        }
    }
}

/// Where audit rows are made durable (see `AuditSettings::durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDurability {
    Database,
    Journal,
}

impl AuditSettings {
    /// The configured durability, or the default for the configured directory.
    pub fn durability(&self) -> Result<AuditDurability, ConfigError> {
        match (self.durability.as_deref(), &self.journal_dir) {
            (Some("database"), _) => Ok(AuditDurability::Database),
            (Some("journal"), Some(_)) => Ok(AuditDurability::Journal),
            (Some("journal"), None) => Err(ConfigError::Invalid(
                "audit.durability = \"journal\" needs audit.journal_dir (SHCR_AUDIT__JOURNAL_DIR), \
                 a persistent local directory of this process's own"
                    .into(),
            )),
            (Some(other), _) => Err(ConfigError::Invalid(format!(
                "audit.durability must be database or journal, got {other}"
            ))),
            (None, Some(_)) => Ok(AuditDurability::Journal),
            (None, None) => Ok(AuditDurability::Database),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceSettings {
    /// Register unknown clients on first use with generous limits. Unset: on exactly when the
    /// development issuer is enabled. Refused at start-up without the development issuer:
    /// in production every client is onboarded explicitly (`shcr clients add`).
    pub auto_register: Option<bool>,
    /// How long a replica trusts its copy of a registry entry, seconds: a suspension made on
    /// another replica or with the CLI takes effect within this time.
    pub cache_seconds: u64,
    /// API product file (request costs, lifecycle); the built-in `governance/api.toml` when unset.
    pub product_file: Option<PathBuf>,
    /// Profile folders (`*.json` profile rule files) loaded besides the built-in UK Core and
    /// shcr profiles.
    pub profiles_dir: Option<PathBuf>,
}

impl Default for GovernanceSettings {
    fn default() -> Self {
        GovernanceSettings {
            auto_register: None,
            cache_seconds: 5,
            product_file: None,
            profiles_dir: None,
        }
    }
}

impl Settings {
    /// Whether unknown clients are registered on first use (development only).
    pub fn auto_register_clients(&self) -> bool {
        self.governance
            .auto_register
            .unwrap_or(self.dev_issuer.enabled)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// Event catalogue file; the catalogue built into the binary when unset.
    pub catalogue: Option<PathBuf>,
    /// How long message ids and Idempotency-Keys are remembered, hours. A repeat older than
    /// this is processed again (and then converges by business identifier and source time).
    pub idempotency_retention_hours: u64,
    /// Search-index lag (seconds) above which an `index-lag-1` platform event is raised.
    pub index_lag_alert_seconds: f64,
    pub nats: NatsSettings,
    pub subscriptions: SubscriptionSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// NATS server URL(s); unset means no NATS consumer and no NATS channel.
    pub url: Option<String>,
    /// JetStream stream holding inbound messages (created if missing, when `create_stream`).
    pub stream: String,
    /// Inbound subjects are `<subject_prefix>.<ODS code>.<event code>`.
    pub subject_prefix: String,
    /// Durable consumer name: replicas share it, so each message goes to one of them.
    pub consumer: String,
    pub create_stream: bool,
    /// How a message proves which trust sent it: `token` (an `Authorization: Bearer` header
    /// with the trust's system token, verified as of the time the broker accepted the
    /// message) or `subject` (trust the broker: each trust's NATS user may only publish under
    /// its own ODS code). The ODS code in the subject must match the sender either way.
    pub authentication: String,
    /// Deliveries of a message failing transiently before it is dead-lettered.
    pub max_deliver: i64,
    /// Redelivery delay after the n-th failure (the last value repeats), seconds.
    pub backoff_seconds: Vec<f64>,
    /// Seconds the broker waits for an acknowledgement before redelivering.
    pub ack_wait_seconds: u64,
    /// Groups of messages processed at the same time.
    pub concurrency: usize,
    /// Most messages applied in one transaction (one commit for the group). Messages already
    /// delivered join a group; none is waited for.
    pub batch_size: usize,
    /// Platform events are published as `<platform_subject_prefix>.<event code>`.
    pub platform_subject_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionSettings {
    /// Run the change-feed dispatcher and delivery workers in this process.
    pub enabled: bool,
    /// Subscriptions delivered to at the same time.
    pub workers: usize,
    /// Consecutive failed deliveries before a subscription goes into `error`.
    pub max_failures: u32,
    /// First retry delay, milliseconds; doubles per failure up to `backoff_max_seconds`.
    pub backoff_initial_ms: u64,
    pub backoff_max_seconds: u64,
    pub request_timeout_seconds: u64,
    /// Events per notification Bundle at most.
    pub batch_size: i64,
    /// How often the dispatcher looks at the change feed, and the delivery workers' fallback
    /// when no wake-up arrives, milliseconds.
    pub poll_interval_ms: u64,
    /// Client ids allowed `full-resource` payloads. Empty: nobody (deny by default); access
    /// control (consent, labels) will refine this per resource.
    pub full_resource_clients: Vec<String>,
    /// rest-hook endpoints must start with one of these; empty allows any http(s) URL.
    pub allowed_endpoints: Vec<String>,
}

impl Default for EventsSettings {
    fn default() -> Self {
        EventsSettings {
            catalogue: None,
            idempotency_retention_hours: 30 * 24,
            index_lag_alert_seconds: 30.0,
            nats: NatsSettings::default(),
            subscriptions: SubscriptionSettings::default(),
        }
    }
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: None,
            stream: "SHCR_INBOUND".into(),
            subject_prefix: "shcr.inbound".into(),
            consumer: "shcr-ingest".into(),
            create_stream: true,
            authentication: "token".into(),
            max_deliver: 5,
            backoff_seconds: vec![1.0, 5.0, 30.0, 120.0],
            ack_wait_seconds: 30,
            concurrency: 4,
            batch_size: 32,
            platform_subject_prefix: "shcr.platform".into(),
        }
    }
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            enabled: true,
            workers: 4,
            max_failures: 10,
            backoff_initial_ms: 1000,
            backoff_max_seconds: 300,
            request_timeout_seconds: 10,
            batch_size: 100,
            poll_interval_ms: 100,
            full_resource_clients: Vec::new(),
            allowed_endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// OIDC issuer whose discovery document and JWKS verify bearer tokens. When the dev issuer is
    /// enabled and this is unset, the dev issuer is used.
    pub issuer: Option<String>,
    /// Expected `aud` claim.
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf`, seconds.
    pub leeway_seconds: u64,
    /// How long a fetched JWKS is trusted before it is fetched again, seconds. A key removed by
    /// the issuer stops being accepted within this time.
    pub jwks_max_age_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerSettings {
    /// Serve a development token issuer under `/dev-issuer`. Never enable in production.
    pub enabled: bool,
    /// PEM file with the dev issuer's signing key; created on first use.
    pub key_file: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            host: "127.0.0.1".into(),
            port: 8080,
            public_url: None,
            max_body_bytes: 32 * 1024 * 1024,
            db_max_connections: 16,
            workers: None,
            auth: AuthSettings {
                issuer: None,
                audience: "shcr".into(),
                leeway_seconds: 30,
                jwks_max_age_seconds: 300,
            },
            dev_issuer: DevIssuerSettings {
                enabled: false,
                key_file: PathBuf::from(".shcr/dev-issuer-key.pem"),
            },
            log_format: "json".into(),
            events: EventsSettings::default(),
            index_dir: Some(PathBuf::from(".shcr/index")),
            search_params_dir: None,
            identity_matching: None,
            access: AccessConfig::default(),
            audit: AuditSettings::default(),
            governance: GovernanceSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then the TOML file (if given), then `SHCR_*` variables (`SHCR_AUTH__ISSUER` for
    /// nested keys), then `DATABASE_URL`.
    pub fn load(file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("SHCR_").split("__"));
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        if settings.database_url.is_none() {
            settings.database_url = std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty());
        }
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.issuer.is_none() && !self.dev_issuer.enabled {
            return Err(ConfigError::Invalid(
                "no token issuer: set auth.issuer (SHCR_AUTH__ISSUER) to your OIDC issuer, \
                 or enable the development issuer (SHCR_DEV_ISSUER__ENABLED=true) outside production"
                    .into(),
            ));
        }
        if self.auth.audience.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "auth.audience must not be empty".into(),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be at least 1024".into(),
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url must start with http:// or https://, got {url}"
            )));
        }
        if !matches!(self.log_format.as_str(), "json" | "pretty") {
            return Err(ConfigError::Invalid(format!(
                "log_format must be json or pretty, got {}",
                self.log_format
            )));
        }
        let nats = &self.events.nats;
        if !matches!(nats.authentication.as_str(), "token" | "subject") {
            return Err(ConfigError::Invalid(format!(
                "events.nats.authentication must be token or subject, got {}",
                nats.authentication
            )));
        }
        if nats.max_deliver < 1
            || nats.concurrency == 0
            || nats.batch_size == 0
            || nats.backoff_seconds.is_empty()
        {
            return Err(ConfigError::Invalid(
                "events.nats: max_deliver, concurrency and batch_size must be at least 1 and backoff_seconds not empty"
                    .into(),
            ));
        }
        if self.governance.auto_register == Some(true) && !self.dev_issuer.enabled {
            return Err(ConfigError::Invalid(
                "governance.auto_register is for development only and needs the development \
                 issuer; onboard production clients with `shcr clients add`"
                    .into(),
            ));
        }
        self.audit.durability()?;
        if self.audit.segment_bytes < 4096
            || self.audit.ship_stuck_seconds == 0
            || !(1..=16).contains(&self.audit.journal_lanes)
        {
            return Err(ConfigError::Invalid(
                "audit: segment_bytes must be at least 4096, ship_stuck_seconds at least 1 and \
                 journal_lanes from 1 to 16"
                    .into(),
            ));
        }
        let subs = &self.events.subscriptions;
        if subs.workers == 0 || subs.batch_size < 1 || subs.max_failures == 0 {
            return Err(ConfigError::Invalid(
                "events.subscriptions: workers, batch_size and max_failures must be at least 1"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url.as_deref().ok_or_else(|| {
            ConfigError::Invalid(
                "no database: set DATABASE_URL (or SHCR_DATABASE_URL), or run `shcr demo` \
                 which starts a private PostgreSQL"
                    .into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_durability_defaults_to_the_journal_only_with_a_directory() {
        let mut a = AuditSettings::default();
        assert_eq!(a.durability().unwrap(), AuditDurability::Database);
        a.journal_dir = Some(PathBuf::from("/var/lib/shcr/audit-journal"));
        assert_eq!(a.durability().unwrap(), AuditDurability::Journal);
        a.durability = Some("database".into());
        assert_eq!(a.durability().unwrap(), AuditDurability::Database);
        a.durability = Some("journal".into());
        a.journal_dir = None;
        assert!(a.durability().is_err(), "journal without a directory");
        a.durability = Some("disk".into());
        assert!(a.durability().is_err());
    }
}
