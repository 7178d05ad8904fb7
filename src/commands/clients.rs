//! `shcr clients add | list | show | update | suspend | reinstate`: the API consumer registry
//! from the command line (the same functions as the admin API; every change is recorded with
//! the operator named by `--actor`, default the OS user).

use crate::config::Settings;
use crate::governance::registry::{self, Actor, Client, ClientInput};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ClientsArgs {
    /// Who is making the change, for the registry history (default: $USER).
    #[arg(long, global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: ClientsCommand,
}

/// Fields of a registry entry; on `update` only those given change.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientFields {
    /// ODS code of the organisation that answers for the client.
    #[arg(long)]
    pub ods: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub contact: Option<String>,
    /// application (a trust's system) or user (a portal acting for a person).
    #[arg(long)]
    pub mode: Option<String>,
    /// Allowed interactions, comma-separated (read,search-type,create,... or *).
    #[arg(long, value_delimiter = ',')]
    pub interactions: Option<Vec<String>>,
    /// Allowed token scopes, comma-separated (* = any).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Allowed subscription topic canonicals, comma-separated (* = all).
    #[arg(long, value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    /// Allowed subscription payloads: empty, id-only, full-resource.
    #[arg(long, value_delimiter = ',')]
    pub payloads: Option<Vec<String>>,
    /// Sustained request tokens per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Token bucket size (the largest burst).
    #[arg(long)]
    pub burst: Option<i32>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<i32>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientsCommand {
    /// Register a client.
    Add {
        client_id: String,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// Every registered client.
    List,
    /// One client and its change history.
    Show { client_id: String },
    /// Change a client's registration.
    Update {
        client_id: String,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// Refuse a client's requests until reinstated.
    Suspend {
        client_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Let a suspended client call again.
    Reinstate {
        client_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn input(client_id: Option<String>, f: ClientFields) -> ClientInput {
    ClientInput {
        client_id,
        ods_code: f.ods,
        name: f.name,
        owner: f.owner,
        contact: f.contact,
        access_mode: f.mode,
        interactions: f.interactions,
        scopes: f.scopes,
        topics: f.topics,
        payloads: f.payloads,
        rate_per_second: f.rate,
        burst: f.burst,
        max_concurrent: f.concurrency,
    }
}

fn line(c: &Client) -> String {
    format!(
        "{:<28} {:<8} {:<11} {:<9} {:>7}/s burst {:<5} conc {:<4} {}",
        c.client_id,
        c.ods_code,
        c.access_mode,
        c.status,
        c.rate_per_second,
        c.burst,
        c.max_concurrent,
        c.name
    )
}

pub async fn run(settings: Settings, args: ClientsArgs) -> anyhow::Result<()> {
    let store = Store::connect(settings.require_database_url()?, 2).await?;
    store.migrate().await?;
    let pool = store.pool();
    let actor = Actor::named(format!(
        "cli:{}",
        args.actor
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into())
    ));
    match args.command {
        ClientsCommand::Add { client_id, fields } => {
            let c = registry::register(pool, &input(Some(client_id), fields), &actor).await?;
            println!("registered\n{}", line(&c));
        }
        ClientsCommand::List => {
            for c in registry::list(pool).await? {
                println!("{}", line(&c));
            }
        }
        ClientsCommand::Show { client_id } => {
            let c = registry::get(pool, &client_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("client '{client_id}' is not registered"))?;
            let mut body = c.to_json();
            body["history"] = serde_json::json!(registry::changes(pool, &client_id).await?);
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        ClientsCommand::Update { client_id, fields } => {
            let c = registry::update(pool, &client_id, &input(None, fields), &actor).await?;
            println!("updated\n{}", line(&c));
        }
        ClientsCommand::Suspend { client_id, reason } => {
            let c = registry::suspend(pool, &client_id, &reason, &actor).await?;
            println!("suspended\n{}", line(&c));
        }
        ClientsCommand::Reinstate { client_id, reason } => {
            let c = registry::reinstate(pool, &client_id, reason.as_deref(), &actor).await?;
            println!("reinstated\n{}", line(&c));
        }
    }
    Ok(())
}
