//! The API consumer registry: who may call shcr, in which access mode, for what, how fast.
//!
//! Stored in PostgreSQL (`api_client`); every change is appended to `api_client_change` with
//! the actor, the request id and the record before and after, in the same transaction as the
//! change itself, so the history of a client can never disagree with its current state.

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::access::OdsCode;

/// FHIR interactions a registry entry may allow (the labels `metrics::interaction` gives a
/// route), plus `*` for all of them.
pub const INTERACTIONS: &[&str] = &[
    "*",
    "read",
    "vread",
    "search-type",
    "search-system",
    "search-compartment",
    "everything",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "update",
    "delete",
    "conditional-update",
    "conditional-delete",
    "transaction",
    "process-message",
    "validate",
    "subscription-status",
    "subscription-events",
    "metrics",
    "admin",
];

pub const PAYLOADS: &[&str] = &["empty", "id-only", "full-resource"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// A system with no end user (a trust's back-end), authenticated as itself.
    Application,
    /// A portal acting for an authenticated person (CIS2).
    User,
}

impl AccessMode {
    pub fn parse(s: &str) -> Option<AccessMode> {
        match s {
            "application" | "application-restricted" => Some(AccessMode::Application),
            "user" | "user-restricted" => Some(AccessMode::User),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AccessMode::Application => "application",
            AccessMode::User => "user",
        }
    }
}

/// One registered client as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Client {
    pub client_id: String,
    pub ods_code: String,
    pub name: String,
    pub owner: String,
    pub contact: String,
    pub access_mode: String,
    pub interactions: Vec<String>,
    pub scopes: Vec<String>,
    pub topics: Vec<String>,
    pub payloads: Vec<String>,
    pub rate_per_second: f64,
    pub burst: i32,
    pub max_concurrent: i32,
    pub status: String,
    pub status_reason: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

fn instant(t: OffsetDateTime) -> String {
    crate::fhir::instant::format_instant(t)
}

fn allows(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

impl Client {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    pub fn mode(&self) -> AccessMode {
        AccessMode::parse(&self.access_mode).unwrap_or(AccessMode::Application)
    }

    pub fn allows_interaction(&self, interaction: &str) -> bool {
        allows(&self.interactions, interaction)
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        allows(&self.scopes, scope)
    }

    pub fn allows_topic(&self, topic: &str) -> bool {
        allows(&self.topics, topic)
    }

    pub fn allows_payload(&self, payload: &str) -> bool {
        allows(&self.payloads, payload)
    }

    /// Whether this client may create or change `subscription` (a Subscription resource): its
    /// topic (`criteria`) and payload level must be among those registered. `Err` says why not.
    pub fn check_subscription(&self, subscription: &Value) -> Result<(), String> {
        let topic = subscription
            .get("criteria")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !self.allows_topic(topic) {
            return Err(format!(
                "client '{}' is not registered for subscription topic '{topic}'",
                self.client_id
            ));
        }
        let payload = subscription
            .pointer("/channel/_payload/extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| {
                e.get("url").and_then(Value::as_str)
                    == Some(crate::events::subscriptions::PAYLOAD_CONTENT)
            })
            .and_then(|e| e.get("valueCode"))
            .and_then(Value::as_str)
            // The server's default when none is asked for (data minimisation).
            .unwrap_or("id-only");
        if !self.allows_payload(payload) {
            return Err(format!(
                "client '{}' is not registered for '{payload}' subscription payloads",
                self.client_id
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "clientId": self.client_id,
            "odsCode": self.ods_code,
            "name": self.name,
            "owner": self.owner,
            "contact": self.contact,
            "accessMode": self.access_mode,
            "interactions": self.interactions,
            "scopes": self.scopes,
            "topics": self.topics,
            "payloads": self.payloads,
            "ratePerSecond": self.rate_per_second,
            "burst": self.burst,
            "maxConcurrent": self.max_concurrent,
            "status": self.status,
            "statusReason": self.status_reason,
            "created": instant(self.created_at),
            "updated": instant(self.updated_at),
        })
    }
}

/// What an administrator sends to register or change a client (JSON, camelCase). On register,
/// `clientId`, `odsCode`, `name` and `accessMode` are required; on update every field is
/// optional and only the ones given change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientInput {
    pub client_id: Option<String>,
    pub ods_code: Option<String>,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub contact: Option<String>,
    pub access_mode: Option<String>,
    pub interactions: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
    pub payloads: Option<Vec<String>>,
    pub rate_per_second: Option<f64>,
    pub burst: Option<i32>,
    pub max_concurrent: Option<i32>,
}

/// Who changed the registry, for its history.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn named(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            request_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("client '{0}' is not registered")]
    NotFound(String),
    #[error("client '{0}' is already registered; change it with an update")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("registry storage: {0}")]
    Store(#[from] sqlx::Error),
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic())
}

impl Client {
    /// Applies `input` to this record, checking every value; `client_id` cannot change.
    fn apply(&mut self, input: &ClientInput) -> Result<(), RegistryError> {
        let invalid = |m: String| Err(RegistryError::Invalid(m));
        if let Some(id) = &input.client_id
            && id != &self.client_id
        {
            return invalid(format!(
                "clientId cannot change ({} → {id}); register a new client instead",
                self.client_id
            ));
        }
        if let Some(ods) = &input.ods_code {
            match OdsCode::parse(ods) {
                Some(o) => self.ods_code = o.to_string(),
                None => return invalid(format!("odsCode '{ods}' is not an ODS code")),
            }
        }
        if let Some(name) = &input.name {
            if name.trim().is_empty() {
                return invalid("name must not be empty".into());
            }
            self.name = name.trim().to_string();
        }
        if let Some(owner) = &input.owner {
            self.owner = owner.trim().to_string();
        }
        if let Some(contact) = &input.contact {
            self.contact = contact.trim().to_string();
        }
        if let Some(mode) = &input.access_mode {
            match AccessMode::parse(mode) {
                Some(m) => self.access_mode = m.code().to_string(),
                None => {
                    return invalid(format!("accessMode '{mode}' must be application or user"));
                }
            }
        }
        if let Some(list) = &input.interactions {
            if let Some(bad) = list.iter().find(|i| !INTERACTIONS.contains(&i.as_str())) {
                return invalid(format!(
                    "interaction '{bad}' is not one of {}",
                    INTERACTIONS.join(", ")
                ));
            }
            self.interactions = list.clone();
        }
        if let Some(list) = &input.scopes {
            self.scopes = list.clone();
        }
        if let Some(list) = &input.topics {
            self.topics = list.clone();
        }
        if let Some(list) = &input.payloads {
            if let Some(bad) = list.iter().find(|p| !PAYLOADS.contains(&p.as_str())) {
                return invalid(format!(
                    "payload '{bad}' is not one of {}",
                    PAYLOADS.join(", ")
                ));
            }
            self.payloads = list.clone();
        }
        if let Some(rate) = input.rate_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return invalid("ratePerSecond must be a positive number".into());
            }
            self.rate_per_second = rate;
        }
        if let Some(burst) = input.burst {
            if burst < 1 {
                return invalid("burst must be at least 1".into());
            }
            self.burst = burst;
        }
        if let Some(n) = input.max_concurrent {
            if n < 1 {
                return invalid("maxConcurrent must be at least 1".into());
            }
            self.max_concurrent = n;
        }
        Ok(())
    }

    /// A new record from `input` with the registry's defaults for what it leaves out.
    pub fn from_input(input: &ClientInput) -> Result<Client, RegistryError> {
        let missing = |f: &str| RegistryError::Invalid(format!("{f} is required"));
        let client_id = input.client_id.clone().ok_or_else(|| missing("clientId"))?;
        if !valid_client_id(&client_id) {
            return Err(RegistryError::Invalid(
                "clientId must be 1 to 200 printable characters without spaces".into(),
            ));
        }
        input.ods_code.as_ref().ok_or_else(|| missing("odsCode"))?;
        input.name.as_ref().ok_or_else(|| missing("name"))?;
        input
            .access_mode
            .as_ref()
            .ok_or_else(|| missing("accessMode"))?;
        let now = OffsetDateTime::now_utc();
        let mut client = Client {
            client_id,
            ods_code: String::new(),
            name: String::new(),
            owner: String::new(),
            contact: String::new(),
            access_mode: String::new(),
            interactions: vec!["*".into()],
            scopes: vec!["*".into()],
            topics: Vec::new(),
            payloads: vec!["empty".into(), "id-only".into()],
            rate_per_second: 20.0,
            burst: 40,
            max_concurrent: 8,
            status: "active".into(),
            status_reason: None,
            created_at: now,
            updated_at: now,
        };
        client.apply(input)?;
        Ok(client)
    }
}

const COLUMNS: &str = "client_id, ods_code, name, owner, contact, access_mode, interactions, \
     scopes, topics, payloads, rate_per_second, burst, max_concurrent, status, status_reason, \
     created_at, updated_at";

pub async fn list(pool: &PgPool) -> Result<Vec<Client>, RegistryError> {
    let sql = format!("SELECT {COLUMNS} FROM api_client ORDER BY client_id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?)
}

pub async fn get(pool: &PgPool, client_id: &str) -> Result<Option<Client>, RegistryError> {
    let sql = format!("SELECT {COLUMNS} FROM api_client WHERE client_id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(client_id)
        .fetch_optional(pool)
        .await?)
}

async fn record_change(
    conn: &mut sqlx::PgConnection,
    client_id: &str,
    action: &str,
    actor: &Actor,
    reason: Option<&str>,
    before: Option<&Client>,
    after: &Client,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO api_client_change (client_id, action, actor, request_id, reason, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(client_id)
    .bind(action)
    .bind(&actor.id)
    .bind(&actor.request_id)
    .bind(reason)
    .bind(before.map(Client::to_json))
    .bind(after.to_json())
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert(conn: &mut sqlx::PgConnection, c: &Client) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO api_client (client_id, ods_code, name, owner, contact, access_mode,
             interactions, scopes, topics, payloads, rate_per_second, burst, max_concurrent,
             status, status_reason, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (client_id) DO UPDATE SET
             ods_code = excluded.ods_code, name = excluded.name, owner = excluded.owner,
             contact = excluded.contact, access_mode = excluded.access_mode,
             interactions = excluded.interactions, scopes = excluded.scopes,
             topics = excluded.topics, payloads = excluded.payloads,
             rate_per_second = excluded.rate_per_second, burst = excluded.burst,
             max_concurrent = excluded.max_concurrent, status = excluded.status,
             status_reason = excluded.status_reason, updated_at = excluded.updated_at",
    )
    .bind(&c.client_id)
    .bind(&c.ods_code)
    .bind(&c.name)
    .bind(&c.owner)
    .bind(&c.contact)
    .bind(&c.access_mode)
    .bind(&c.interactions)
    .bind(&c.scopes)
    .bind(&c.topics)
    .bind(&c.payloads)
    .bind(c.rate_per_second)
    .bind(c.burst)
    .bind(c.max_concurrent)
    .bind(&c.status)
    .bind(&c.status_reason)
    .bind(c.created_at)
    .bind(c.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers a new client; refused when the id is taken.
pub async fn register(
    pool: &PgPool,
    input: &ClientInput,
    actor: &Actor,
) -> Result<Client, RegistryError> {
    let client = Client::from_input(input)?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO api_client (client_id, ods_code, name, access_mode)
         VALUES ($1, $2, $3, $4) ON CONFLICT (client_id) DO NOTHING",
    )
    .bind(&client.client_id)
    .bind(&client.ods_code)
    .bind(&client.name)
    .bind(&client.access_mode)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(RegistryError::Exists(client.client_id));
    }
    upsert(&mut tx, &client).await?;
    record_change(
        &mut tx,
        &client.client_id,
        "register",
        actor,
        None,
        None,
        &client,
    )
    .await?;
    tx.commit().await?;
    Ok(client)
}

/// Registers `input` unless the client exists already (seeding the demo and development
/// clients); returns whether it was added.
pub async fn ensure(
    pool: &PgPool,
    input: &ClientInput,
    actor: &Actor,
) -> Result<bool, RegistryError> {
    match register(pool, input, actor).await {
        Ok(_) => Ok(true),
        Err(RegistryError::Exists(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Changes a client under a row lock, recording the change; `change` edits the record.
async fn modify(
    pool: &PgPool,
    client_id: &str,
    action: &str,
    actor: &Actor,
    reason: Option<&str>,
    change: impl FnOnce(&mut Client) -> Result<(), RegistryError>,
) -> Result<Client, RegistryError> {
    let mut tx = pool.begin().await?;
    let sql = format!("SELECT {COLUMNS} FROM api_client WHERE client_id = $1 FOR UPDATE");
    let before: Client = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| RegistryError::NotFound(client_id.to_string()))?;
    let mut after = before.clone();
    change(&mut after)?;
    after.updated_at = OffsetDateTime::now_utc();
    upsert(&mut tx, &after).await?;
    record_change(
        &mut tx,
        client_id,
        action,
        actor,
        reason,
        Some(&before),
        &after,
    )
    .await?;
    tx.commit().await?;
    Ok(after)
}

pub async fn update(
    pool: &PgPool,
    client_id: &str,
    input: &ClientInput,
    actor: &Actor,
) -> Result<Client, RegistryError> {
    modify(pool, client_id, "update", actor, None, |c| c.apply(input)).await
}

/// Suspends a client: its tokens are refused until it is reinstated.
pub async fn suspend(
    pool: &PgPool,
    client_id: &str,
    reason: &str,
    actor: &Actor,
) -> Result<Client, RegistryError> {
    if reason.trim().is_empty() {
        return Err(RegistryError::Invalid(
            "a suspension needs a reason (it is shown to the client and kept in the history)"
                .into(),
        ));
    }
    modify(pool, client_id, "suspend", actor, Some(reason), |c| {
        c.status = "suspended".into();
        c.status_reason = Some(reason.trim().to_string());
        Ok(())
    })
    .await
}

pub async fn reinstate(
    pool: &PgPool,
    client_id: &str,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Client, RegistryError> {
    modify(pool, client_id, "reinstate", actor, reason, |c| {
        c.status = "active".into();
        c.status_reason = None;
        Ok(())
    })
    .await
}

/// seq, action, actor, request id, reason, time.
type ChangeRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    OffsetDateTime,
);

/// The change history of one client, oldest first.
pub async fn changes(pool: &PgPool, client_id: &str) -> Result<Vec<Value>, RegistryError> {
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "SELECT seq, action, actor, request_id, reason, at FROM api_client_change
             WHERE client_id = $1 ORDER BY seq",
    )
    .bind(client_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, action, actor, request_id, reason, at)| {
            json!({"seq": seq, "action": action, "actor": actor, "requestId": request_id,
                   "reason": reason, "at": instant(at)})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ClientInput {
        ClientInput {
            client_id: Some("rx1-pas".into()),
            ods_code: Some("rx1".into()),
            name: Some("RX1 PAS".into()),
            access_mode: Some("application".into()),
            ..ClientInput::default()
        }
    }

    #[test]
    fn a_new_client_gets_conservative_defaults() {
        let c = Client::from_input(&input()).unwrap();
        assert_eq!(c.ods_code, "RX1");
        assert!(c.is_active());
        assert!(c.allows_payload("id-only") && !c.allows_payload("full-resource"));
        assert!(c.topics.is_empty());
    }

    #[test]
    fn subscriptions_are_limited_to_registered_topics_and_payloads() {
        let mut i = input();
        i.topics = Some(vec!["https://t/admitted".into()]);
        let c = Client::from_input(&i).unwrap();
        let sub = |topic: &str, payload: &str| {
            serde_json::json!({"resourceType": "Subscription", "criteria": topic,
                "channel": {"_payload": {"extension": [{
                    "url": crate::events::subscriptions::PAYLOAD_CONTENT, "valueCode": payload}]}}})
        };
        assert!(
            c.check_subscription(&sub("https://t/admitted", "id-only"))
                .is_ok()
        );
        assert!(
            c.check_subscription(&sub("https://t/discharged", "id-only"))
                .is_err()
        );
        assert!(
            c.check_subscription(&sub("https://t/admitted", "full-resource"))
                .is_err()
        );
    }

    #[test]
    fn unknown_interactions_and_bad_limits_are_refused() {
        let mut i = input();
        i.interactions = Some(vec!["raed".into()]);
        assert!(Client::from_input(&i).is_err());
        let mut i = input();
        i.rate_per_second = Some(0.0);
        assert!(Client::from_input(&i).is_err());
        let mut i = input();
        i.access_mode = Some("open".into());
        assert!(Client::from_input(&i).is_err());
    }
}
