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
    /// Folder of the local search index; unset keeps it in memory (rebuilt at every start).
    pub index_dir: Option<PathBuf>,
    /// Extra SearchParameter files (Bundles or single resources) loaded after the built-in set.
    pub search_params_dir: Option<PathBuf>,
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
            index_dir: Some(PathBuf::from(".shcr/index")),
            search_params_dir: None,
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
