//! A message as it arrives from a queue (NATS today): authenticate the sender, check the
//! subject, apply it through `Ingest`, and decide between acknowledge, retry and dead letter.
//! Dead-letter replay goes through the same code.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::access::{AuthError, Caller, OdsCode, Principal, SystemCaller, TokenVerifier};
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};

use super::dead_letter::NewDeadLetter;
use super::error::MessageError;
use super::ingest::{Envelope, Ingest, Processed};

/// How a queued message proves its sender (see `events.nats.authentication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// `Authorization: Bearer <trust system token>` header, verified as of publish time.
    Token,
    /// The broker's per-trust publish permissions: the subject's ODS code is the sender.
    Subject,
}

/// A queued message, transport-neutral.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub subject: String,
    /// Header name (lower case) → value.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    /// When the broker accepted it.
    pub published: OffsetDateTime,
}

impl RawMessage {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Who sent a message, as recorded in a dead letter when it was verified at receipt.
fn caller_record(caller: &Caller) -> Value {
    json!({"clientId": caller.id(), "ods": caller.org().as_str()})
}

fn caller_from_record(v: &Value) -> Option<Caller> {
    let client_id = v.get("clientId")?.as_str()?.to_string();
    let ods_code = OdsCode::parse(v.get("ods")?.as_str()?)?;
    Some(Caller {
        principal: Principal::System(SystemCaller {
            client_id,
            ods_code,
            scopes: Vec::new(),
        }),
        token_id: None,
        issuer: "shcr:dead-letter".into(),
    })
}

/// A trust sends many messages under one token: its signature is checked once a minute, and
/// each message's publish time is judged against the cached `exp`/`nbf`.
const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const TOKEN_CACHE_CAPACITY: usize = 1_000;

struct CachedToken {
    caller: Caller,
    exp: i64,
    nbf: Option<i64>,
    verified: std::time::Instant,
}

pub struct Inbound {
    ingest: Ingest,
    verifier: Arc<TokenVerifier>,
    tokens: std::sync::Mutex<std::collections::HashMap<[u8; 32], CachedToken>>,
    authentication: Authentication,
    subject_prefix: String,
    /// The API consumer registry: a live message from an unknown or suspended client is
    /// refused like a REST request (checked in `handle` only: a replay of a dead letter is an
    /// operator's decision and acts as the sender recorded at receipt).
    clients: Option<Arc<crate::governance::directory::Directory>>,
}

/// The result of handling one queued message.
pub struct Handled {
    pub result: Result<Processed, MessageError>,
    /// The verified sender, if authentication got that far.
    pub caller: Option<Caller>,
}

impl Inbound {
    pub fn new(
        ingest: Ingest,
        verifier: Arc<TokenVerifier>,
        authentication: Authentication,
        subject_prefix: String,
    ) -> Inbound {
        Inbound {
            ingest,
            verifier,
            tokens: Default::default(),
            authentication,
            subject_prefix: subject_prefix.trim_end_matches('.').to_string(),
            clients: None,
        }
    }

    /// Checks each live message's sender against the consumer registry (token
    /// authentication only: with `subject` authentication the broker's per-trust users are the
    /// registry of who may publish).
    pub fn with_registry(
        mut self,
        clients: Arc<crate::governance::directory::Directory>,
    ) -> Inbound {
        self.clients = Some(clients);
        self
    }

    /// Refuses a message whose client is not registered, suspended, or registered for another
    /// organisation or for user-restricted access. Permanent: the message goes to the dead
    /// letters with the reason, and can be replayed once the client is reinstated.
    async fn check_registry(&self, caller: &Caller) -> Result<(), MessageError> {
        let (Some(clients), Authentication::Token) = (&self.clients, &self.authentication) else {
            return Ok(());
        };
        let client_id = caller.client_id().unwrap_or(caller.id());
        let refuse = |status: u16, code: IssueType, text: String| {
            Err(MessageError::permanent(
                "refused",
                status,
                vec![Issue::error(code, text)],
            ))
        };
        match clients.lookup(client_id, caller).await {
            Ok(None) => refuse(
                401,
                IssueType::Login,
                format!("client '{client_id}' is not registered with shcr"),
            ),
            Ok(Some(c)) if !c.is_active() => refuse(
                403,
                IssueType::Suspended,
                format!("client '{client_id}' is suspended"),
            ),
            Ok(Some(c))
                if c.ods_code != caller.org().as_str()
                    || c.mode() != crate::governance::registry::AccessMode::Application =>
            {
                refuse(
                    403,
                    IssueType::Forbidden,
                    format!(
                        "client '{client_id}' is not registered to send messages for {}",
                        caller.org()
                    ),
                )
            }
            Ok(Some(c)) if !c.allows_interaction("process-message") => refuse(
                403,
                IssueType::Forbidden,
                format!("client '{client_id}' is not registered for messaging"),
            ),
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(MessageError::transient("registry", e.to_string())),
        }
    }

    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// `<prefix>.<ODS>.<event>` → (ODS, event).
    fn parse_subject(&self, subject: &str) -> Result<(OdsCode, String), MessageError> {
        let bad = || {
            MessageError::permanent(
                "invalid-subject",
                400,
                vec![Issue::error(
                    IssueType::Invalid,
                    format!(
                        "subject '{subject}' is not {}.<ODS code>.<event code>",
                        self.subject_prefix
                    ),
                )],
            )
        };
        let rest = subject
            .strip_prefix(&self.subject_prefix)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(bad)?;
        let (ods, event) = rest.split_once('.').ok_or_else(bad)?;
        if event.contains('.') {
            return Err(bad());
        }
        Ok((OdsCode::parse(ods).ok_or_else(bad)?, event.to_string()))
    }

    async fn authenticate(&self, raw: &RawMessage, ods: &OdsCode) -> Result<Caller, MessageError> {
        match self.authentication {
            Authentication::Subject => Ok(Caller {
                principal: Principal::System(SystemCaller {
                    client_id: format!("nats:{ods}"),
                    ods_code: ods.clone(),
                    scopes: Vec::new(),
                }),
                token_id: None,
                issuer: "nats".into(),
            }),
            Authentication::Token => {
                let token = raw
                    .header("authorization")
                    .and_then(|v| {
                        let (scheme, t) = v.split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
                    })
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        MessageError::permanent(
                            "unauthenticated",
                            401,
                            vec![Issue::error(
                                IssueType::Login,
                                "the message has no Authorization: Bearer header with the trust's system token",
                            )],
                        )
                    })?;
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
                let at = raw.published.unix_timestamp();
                let leeway = self.verifier.leeway_seconds() as i64;
                let expired = || {
                    MessageError::permanent(
                        "unauthenticated",
                        401,
                        vec![Issue::error(
                            IssueType::Login,
                            "invalid token: the token was not valid when the message was published",
                        )],
                    )
                };
                if let Some(c) = self.tokens.lock().expect("cache").get(&digest)
                    && c.verified.elapsed() < TOKEN_CACHE_TTL
                {
                    if c.exp + leeway < at || c.nbf.is_some_and(|n| n - leeway > at) {
                        return Err(expired());
                    }
                    return Ok(c.caller.clone());
                }
                let (caller, exp, nbf) = self
                    .verifier
                    .verify_as_of(token, raw.published)
                    .await
                    .map_err(|e| match e {
                        AuthError::IssuerUnavailable(m) => {
                            MessageError::transient("issuer-unavailable", m)
                        }
                        other => MessageError::permanent(
                            "unauthenticated",
                            401,
                            vec![Issue::error(IssueType::Login, other.to_string())],
                        ),
                    })?;
                let mut cache = self.tokens.lock().expect("cache");
                if cache.len() >= TOKEN_CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(
                    digest,
                    CachedToken {
                        caller: caller.clone(),
                        exp,
                        nbf,
                        verified: std::time::Instant::now(),
                    },
                );
                Ok(caller)
            }
        }
    }

    /// Authenticates and applies a message as received from the queue.
    pub async fn handle(&self, raw: &RawMessage) -> Handled {
        let (caller, mut bundle, envelope) = match self.admit(raw).await {
            Ok(admitted) => admitted,
            Err(handled) => return handled,
        };
        let result = self.ingest.process(&mut bundle, &caller, &envelope).await;
        Handled {
            result,
            caller: Some(caller),
        }
    }

    /// As `handle` for several messages, applied in one transaction (`Ingest::process_group`):
    /// a message refused before the database, or failing inside it, is reported alone and
    /// does not hold back the others. Results are in input order.
    pub async fn handle_group(&self, raws: &[RawMessage]) -> Vec<Handled> {
        let mut admitted = Vec::with_capacity(raws.len());
        for raw in raws {
            admitted.push(self.admit(raw).await);
        }
        let items: Vec<(&mut Value, &Caller, &Envelope)> = admitted
            .iter_mut()
            .filter_map(|a| a.as_mut().ok())
            .map(|(caller, bundle, envelope)| (bundle, &*caller, &*envelope))
            .collect();
        let mut results = self.ingest.process_group(items).await.into_iter();
        admitted
            .into_iter()
            .map(|a| match a {
                Ok((caller, _, _)) => Handled {
                    result: results.next().expect("one result per admitted message"),
                    caller: Some(caller),
                },
                Err(handled) => handled,
            })
            .collect()
    }

    /// Everything about a queued message that needs no database write: the subject, the
    /// sender's token and registration, the payload as JSON.
    async fn admit(&self, raw: &RawMessage) -> Result<(Caller, Value, Envelope), Handled> {
        let refuse = |result, caller| Handled { result, caller };
        let (ods, event) = self
            .parse_subject(&raw.subject)
            .map_err(|e| refuse(Err(e), None))?;
        let caller = self
            .authenticate(raw, &ods)
            .await
            .map_err(|e| refuse(Err(e), None))?;
        if let Err(e) = self.check_registry(&caller).await {
            return Err(refuse(Err(e), Some(caller)));
        }
        match self.decode(raw, &caller, ods, event) {
            Ok((bundle, envelope)) => Ok((caller, bundle, envelope)),
            Err(e) => Err(refuse(Err(e), Some(caller))),
        }
    }

    async fn apply(
        &self,
        raw: &RawMessage,
        caller: &Caller,
        ods: OdsCode,
        event: String,
    ) -> Result<Processed, MessageError> {
        let (mut bundle, envelope) = self.decode(raw, caller, ods, event)?;
        self.ingest.process(&mut bundle, caller, &envelope).await
    }

    fn decode(
        &self,
        raw: &RawMessage,
        caller: &Caller,
        ods: OdsCode,
        event: String,
    ) -> Result<(Value, Envelope), MessageError> {
        if caller.org() != &ods {
            return Err(MessageError::forbidden(
                None,
                format!(
                    "the token is {}'s but the message was published under {ods}",
                    caller.org()
                ),
            ));
        }
        let mut bundle: Value = serde_json::from_slice(&raw.payload).map_err(|e| {
            MessageError::permanent(
                "invalid",
                400,
                vec![Issue::error(
                    IssueType::Structure,
                    format!(
                        "the payload is not JSON (line {}, column {}): {e}",
                        e.line(),
                        e.column()
                    ),
                )],
            )
        })?;
        crate::fhir::comments::strip_comments(&mut bundle);
        let envelope = Envelope {
            subject_ods: Some(ods),
            subject_event: Some(event),
            request_id: raw.header("x-request-id").map(str::to_string),
        };
        Ok((bundle, envelope))
    }

    /// Replays a dead letter: the sender recorded at receipt stands in for the token (tokens
    /// are never stored); a message whose sender was never verified cannot be replayed.
    pub async fn replay(
        &self,
        d: &super::dead_letter::DeadLetter,
    ) -> Result<Processed, MessageError> {
        let subject = d.subject.clone().unwrap_or_default();
        let (ods, event) = self.parse_subject(&subject)?;
        let caller = match d
            .headers
            .get("authenticatedAs")
            .and_then(caller_from_record)
        {
            Some(c) => c,
            None if self.authentication == Authentication::Subject => {
                let raw = RawMessage {
                    subject: subject.clone(),
                    headers: Vec::new(),
                    payload: Vec::new(),
                    published: d.published_at.unwrap_or(d.received_at),
                };
                self.authenticate(&raw, &ods).await?
            }
            None => {
                return Err(MessageError::permanent(
                    "unauthenticated",
                    401,
                    vec![Issue::error(
                        IssueType::Login,
                        "the sender was not verified when the message arrived, and tokens are not kept: ask the trust to send it again",
                    )],
                ));
            }
        };
        let raw = RawMessage {
            subject,
            headers: header_pairs(&d.headers),
            payload: d.payload.clone(),
            published: d.published_at.unwrap_or(d.received_at),
        };
        self.apply(&raw, &caller, ods, event).await
    }
}

fn header_pairs(headers: &Value) -> Vec<(String, String)> {
    headers
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The dead-letter row for a message that failed.
pub fn dead_letter_for(
    origin: String,
    raw: &RawMessage,
    caller: Option<&Caller>,
    error: &MessageError,
    attempts: i32,
) -> NewDeadLetter {
    let mut headers = Map::new();
    for (k, v) in &raw.headers {
        // Credentials never go into the dead-letter store.
        if !k.eq_ignore_ascii_case("authorization") {
            headers.insert(k.to_ascii_lowercase(), Value::String(v.clone()));
        }
    }
    let mut record = json!({"headers": headers});
    if let Some(c) = caller {
        record["authenticatedAs"] = caller_record(c);
    }
    let parsed: Option<Value> = serde_json::from_slice(&raw.payload).ok();
    let subject_parts: Vec<&str> = raw.subject.rsplitn(3, '.').collect();
    NewDeadLetter {
        origin,
        channel: "nats".into(),
        subject: Some(raw.subject.clone()),
        org: caller
            .map(|c| c.org().to_string())
            .or_else(|| subject_parts.get(1).map(|s| s.to_string())),
        message_id: parsed.as_ref().and_then(super::message::message_id),
        event_code: subject_parts.first().map(|s| s.to_string()),
        reason_code: error.reason_code.to_string(),
        reason: operation_outcome(&error.issues),
        headers: record,
        payload: raw.payload.clone(),
        published_at: Some(raw.published),
        attempts,
    }
}
