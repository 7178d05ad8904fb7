//! shcr's API as a governed product: the consumer registry (who may call, how, how fast),
//! throttling, the lifecycle of shcr's own operations, runtime product metrics, and the
//! developer portal generated from the CapabilityStatement.
//!
//! The HTTP side (middleware, admin API, portal routes) lives in `api::governance` and
//! `api::portal`; this module owns the registry tables and the rules.

pub mod directory;
pub mod freshness;
pub mod openapi;
pub mod portal;
pub mod product;
pub mod registry;
pub mod throttle;
pub mod usage;

use std::time::Duration;

use sqlx::PgPool;

use crate::config::Settings;
use directory::Directory;
use product::Product;
use registry::{Actor, ClientInput, RegistryError};
use throttle::Throttle;

/// The token scope that opens the admin API (`/admin/...`): registry changes and the usage
/// summary. Grant it only to the API product team's own client.
pub const ADMIN_SCOPE: &str = "shcr.admin";

pub struct Governance {
    pub directory: Directory,
    pub throttle: Throttle,
    pub product: Product,
    /// Profiles `$validate` checks and `/profiles` publishes.
    pub profiles: crate::validation::profiles::Profiles,
    /// Development mode: the portal shows example requests with dev tokens.
    pub development: bool,
}

impl Governance {
    pub fn new(settings: &Settings, pool: PgPool) -> anyhow::Result<Governance> {
        Ok(Governance {
            directory: Directory::new(
                pool,
                Duration::from_secs(settings.governance.cache_seconds),
                settings.auto_register_clients(),
            ),
            throttle: Throttle::default(),
            product: Product::load(settings.governance.product_file.as_deref())?,
            profiles: crate::validation::profiles::Profiles::load(
                settings.governance.profiles_dir.as_deref(),
            )?,
            development: settings.dev_issuer.enabled,
        })
    }
}

/// The clients `shcr demo` prints tokens for, registered so the demo works as a real
/// deployment would: a trust's PAS (application-restricted) and the clinician portal
/// (user-restricted).
pub async fn seed_demo_clients(pool: &PgPool) -> Result<(), RegistryError> {
    let actor = Actor::named("shcr demo");
    let clients = [
        ClientInput {
            client_id: Some("rx1-pas".into()),
            ods_code: Some("RX1".into()),
            name: Some("RX1 patient administration system (demo)".into()),
            owner: Some("RX1 integration team".into()),
            contact: Some("integration@rx1.example.nhs.uk".into()),
            access_mode: Some("application".into()),
            topics: Some(vec!["*".into()]),
            rate_per_second: Some(200.0),
            burst: Some(1000),
            max_concurrent: Some(32),
            ..ClientInput::default()
        },
        ClientInput {
            client_id: Some(crate::access::dev_issuer::DEV_PORTAL_CLIENT.into()),
            ods_code: Some("RX1".into()),
            name: Some("Clinician portal (demo)".into()),
            owner: Some("shcr product team".into()),
            contact: Some("shcr@example.nhs.uk".into()),
            access_mode: Some("user".into()),
            topics: Some(vec!["*".into()]),
            rate_per_second: Some(200.0),
            burst: Some(1000),
            max_concurrent: Some(32),
            ..ClientInput::default()
        },
    ];
    for c in &clients {
        registry::ensure(pool, c, &actor).await?;
    }
    Ok(())
}
