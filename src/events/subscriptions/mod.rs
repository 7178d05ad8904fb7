//! Outbound topic-based Subscriptions (FHIR R4 Subscriptions Backport style).
//!
//! A client creates a `Subscription` resource through the REST API with a topic canonical from
//! the catalogue in `criteria`. The dispatcher follows the change feed from a persisted cursor,
//! keeps `subscription_state` in step with the Subscription resources, and numbers every
//! matching change per subscription in `subscription_event`. Delivery workers send handshakes,
//! event notifications and heartbeats (rest-hook or NATS), at least once, with exponential
//! backoff and an `error` state after repeated failure. `$status` and `$events` serve catch-up.

pub mod delivery;
pub mod dispatcher;
pub mod notification;

use serde_json::Value;

use crate::config::SubscriptionSettings;
use crate::store::Owner;

use super::catalogue::Catalogue;

pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
pub const PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
pub const FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const HEARTBEAT_PERIOD: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
pub const CHANNEL_TYPE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";

/// The author shcr writes Subscription status changes as; the dispatcher recognises its own
/// writes by it and does not treat them as the client changing the subscription.
pub const SERVER_AUTHOR_ID: &str = "shcr-subscriptions";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    RestHook,
    Nats,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::RestHook => "rest-hook",
            Channel::Nats => "nats",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "rest-hook" => Some(Channel::RestHook),
            "nats" => Some(Channel::Nats),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Empty,
    IdOnly,
    FullResource,
}

impl Payload {
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Empty => "empty",
            Payload::IdOnly => "id-only",
            Payload::FullResource => "full-resource",
        }
    }

    pub fn parse(s: &str) -> Option<Payload> {
        match s {
            "empty" => Some(Payload::Empty),
            "id-only" => Some(Payload::IdOnly),
            "full-resource" => Some(Payload::FullResource),
            _ => None,
        }
    }
}

/// `patient=Patient/123` or `subject=Patient/123`: the change's resource must refer to (or be)
/// that resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub param: String,
    pub value: String,
}

impl Filter {
    pub fn matches(&self, resource_type: &str, id: &str, content: Option<&Value>) -> bool {
        let target = self.value.as_str();
        if format!("{resource_type}/{id}") == target {
            return true;
        }
        let Some(content) = content else { return false };
        let paths: &[&str] = match self.param.as_str() {
            "patient" => &["subject", "patient", "beneficiary"],
            _ => &["subject"],
        };
        paths.iter().any(|p| {
            content
                .get(p)
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .is_some_and(|r| r == target || r.ends_with(&format!("/{target}")))
        })
    }
}

/// A Subscription resource as the server acts on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub topic: String,
    /// The client's requested status (`requested`, `active`, `off`, `error`).
    pub requested_status: String,
    pub channel: Channel,
    pub endpoint: String,
    pub headers: Vec<String>,
    pub payload: Payload,
    pub filters: Vec<Filter>,
    pub heartbeat_seconds: Option<i32>,
}

fn extension<'a>(element: Option<&'a Value>, url: &str) -> Option<&'a Value> {
    element?
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// Reads a Subscription resource; the error says why it cannot be served (it becomes the
/// subscription's `error` text).
pub fn parse_spec(
    resource: &Value,
    owner: &Owner,
    catalogue: &Catalogue,
    settings: &SubscriptionSettings,
    policy: &dyn PayloadPolicy,
) -> Result<Spec, String> {
    let criteria = resource
        .get("criteria")
        .and_then(Value::as_str)
        .unwrap_or("");
    let topic = catalogue.topic_by_url(criteria).ok_or_else(|| {
        format!(
            "criteria '{criteria}' is not a topic of this server; topics are {}",
            catalogue
                .topics()
                .iter()
                .map(|t| t.url.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let channel_el = resource.get("channel");
    let channel_type = channel_el
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let custom_type = extension(channel_el.and_then(|c| c.get("_type")), CHANNEL_TYPE)
        .and_then(|e| e.get("valueCoding"))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str);
    let endpoint = channel_el
        .and_then(|c| c.get("endpoint"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let channel = match (channel_type, custom_type) {
        (_, Some("nats")) => Channel::Nats,
        ("message", _) if endpoint.starts_with("nats:") => Channel::Nats,
        ("rest-hook", _) => Channel::RestHook,
        (other, _) => {
            return Err(format!(
                "channel type '{other}' is not supported: use rest-hook, or message with a nats:<subject> endpoint"
            ));
        }
    };
    match channel {
        Channel::RestHook => {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err("a rest-hook channel needs an http(s) endpoint".into());
            }
            if !settings.allowed_endpoints.is_empty()
                && !settings
                    .allowed_endpoints
                    .iter()
                    .any(|p| endpoint.starts_with(p.as_str()))
            {
                return Err(format!(
                    "endpoint {endpoint} is not among the endpoints this server may call"
                ));
            }
        }
        Channel::Nats => {
            let subject = endpoint.strip_prefix("nats:").unwrap_or(&endpoint);
            if subject.is_empty() || subject.contains([' ', '*', '>']) {
                return Err("a NATS channel needs endpoint nats:<subject> (no wildcards)".into());
            }
        }
    }
    let payload = match extension(channel_el.and_then(|c| c.get("_payload")), PAYLOAD_CONTENT)
        .and_then(|e| e.get("valueCode"))
        .and_then(Value::as_str)
    {
        // Data minimisation: without an explicit choice only ids travel.
        None => Payload::IdOnly,
        Some(code) => Payload::parse(code).ok_or_else(|| {
            format!("payload content '{code}' is not empty, id-only or full-resource")
        })?,
    };
    if payload == Payload::FullResource && !policy.may_subscribe_full_resource(owner) {
        return Err(format!(
            "full-resource payloads are not permitted for {} {}; use id-only and read the resources",
            owner.kind, owner.id
        ));
    }
    let mut filters = Vec::new();
    if let Some(exts) = resource
        .get("_criteria")
        .and_then(|c| c.get("extension"))
        .and_then(Value::as_array)
    {
        for e in exts
            .iter()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(FILTER_CRITERIA))
        {
            let text = e.get("valueString").and_then(Value::as_str).unwrap_or("");
            let query = text.split_once('?').map(|(_, q)| q).unwrap_or(text);
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
                .map_err(|_| format!("filter criteria '{text}' are not a query string"))?;
            for (param, value) in pairs {
                if !matches!(param.as_str(), "patient" | "subject") {
                    return Err(format!(
                        "filter parameter '{param}' is not supported (supported: patient, subject)"
                    ));
                }
                filters.push(Filter { param, value });
            }
        }
    }
    let heartbeat_seconds = extension(channel_el, HEARTBEAT_PERIOD)
        .and_then(|e| e.get("valueUnsignedInt"))
        .and_then(Value::as_i64)
        .filter(|s| *s > 0)
        .map(|s| s.min(i32::MAX as i64) as i32);
    let headers = channel_el
        .and_then(|c| c.get("header"))
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Spec {
        topic: topic.url.clone(),
        requested_status: resource
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("requested")
            .to_string(),
        channel,
        endpoint,
        headers,
        payload,
        filters,
        heartbeat_seconds,
    })
}

/// The authorisation hook for notification content. Deny by default: full resources leave
/// shcr only for owners the policy allows. `ConfiguredPolicy` decides who may ask;
/// `AccessPayloadPolicy` adds the read-time access decision per resource.
pub trait PayloadPolicy: Send + Sync {
    /// May this owner ask for full-resource notifications at all?
    fn may_subscribe_full_resource(&self, owner: &Owner) -> bool;
    /// May this resource (written by `author_org`) go in full to this owner? If not, the event
    /// is sent id-only.
    fn may_send_resource(
        &self,
        owner: &Owner,
        resource_type: &str,
        content: &Value,
        author_org: Option<&str>,
    ) -> bool;
}

/// Allows full resources only to system clients listed in
/// `events.subscriptions.full_resource_clients`.
pub struct ConfiguredPolicy {
    clients: Vec<String>,
}

impl ConfiguredPolicy {
    pub fn new(settings: &SubscriptionSettings) -> ConfiguredPolicy {
        ConfiguredPolicy {
            clients: settings.full_resource_clients.clone(),
        }
    }
}

impl PayloadPolicy for ConfiguredPolicy {
    fn may_subscribe_full_resource(&self, owner: &Owner) -> bool {
        owner.kind == "system" && self.clients.iter().any(|c| c == &owner.id)
    }

    fn may_send_resource(
        &self,
        owner: &Owner,
        _resource_type: &str,
        content: &Value,
        _author_org: Option<&str>,
    ) -> bool {
        // Restricted and very restricted items never travel in a notification.
        let restricted = content
            .get("meta")
            .and_then(|m| m.get("security"))
            .and_then(Value::as_array)
            .is_some_and(|labels| {
                labels
                    .iter()
                    .any(|l| matches!(l.get("code").and_then(Value::as_str), Some("R") | Some("V")))
            });
        !restricted && self.may_subscribe_full_resource(owner)
    }
}

/// `ConfiguredPolicy` plus the access policy: a trust's system receives in full only what a read
/// by that system would return (its own organisation's data, of types its role may read).
pub struct AccessPayloadPolicy {
    pub configured: ConfiguredPolicy,
    pub access: std::sync::Arc<crate::access::AccessPolicy>,
}

impl PayloadPolicy for AccessPayloadPolicy {
    fn may_subscribe_full_resource(&self, owner: &Owner) -> bool {
        self.configured.may_subscribe_full_resource(owner)
    }

    fn may_send_resource(
        &self,
        owner: &Owner,
        resource_type: &str,
        content: &Value,
        author_org: Option<&str>,
    ) -> bool {
        if !self
            .configured
            .may_send_resource(owner, resource_type, content, author_org)
        {
            return false;
        }
        if !self.access.enforce {
            return true;
        }
        // Only system owners pass `configured`; a system reads its own organisation's data.
        let profile = crate::access::policy::Profile::new(vec!["system".into()]);
        owner.kind == "system"
            && owner.org.is_some()
            && owner.org.as_deref() == author_org
            && self
                .access
                .current()
                .allows(&profile, resource_type, "read")
    }
}

/// Exponential backoff: `initial · 2^(failures-1)`, capped.
pub fn backoff(settings: &SubscriptionSettings, failures: u32) -> std::time::Duration {
    let exp = failures.saturating_sub(1).min(20);
    let ms = settings.backoff_initial_ms.saturating_mul(1u64 << exp);
    std::time::Duration::from_millis(ms.min(settings.backoff_max_seconds * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> Owner {
        Owner {
            kind: "system".into(),
            id: "rx1-portal".into(),
            org: Some("RX1".into()),
        }
    }

    fn subscription(payload: &str) -> Value {
        json!({
            "resourceType": "Subscription", "status": "requested", "reason": "t",
            "criteria": "https://fhir.shcr.example.nhs.uk/SubscriptionTopic/admitted",
            "_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": "Encounter?patient=Patient/p1"}]},
            "channel": {
                "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 60}],
                "type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload}]}
            }
        })
    }

    #[test]
    fn a_backport_subscription_parses() {
        let settings = SubscriptionSettings::default();
        let policy = ConfiguredPolicy::new(&settings);
        let spec = parse_spec(
            &subscription("id-only"),
            &owner(),
            &Catalogue::built_in(),
            &settings,
            &policy,
        )
        .unwrap();
        assert_eq!(spec.channel, Channel::RestHook);
        assert_eq!(spec.payload, Payload::IdOnly);
        assert_eq!(spec.heartbeat_seconds, Some(60));
        assert_eq!(spec.filters[0].value, "Patient/p1");
    }

    #[test]
    fn full_resource_is_denied_unless_the_owner_is_allowed() {
        let mut settings = SubscriptionSettings::default();
        let c = Catalogue::built_in();
        let deny = ConfiguredPolicy::new(&settings);
        let e = parse_spec(
            &subscription("full-resource"),
            &owner(),
            &c,
            &settings,
            &deny,
        );
        assert!(e.unwrap_err().contains("not permitted"));
        settings.full_resource_clients = vec!["rx1-portal".into()];
        let allow = ConfiguredPolicy::new(&settings);
        assert!(
            parse_spec(
                &subscription("full-resource"),
                &owner(),
                &c,
                &settings,
                &allow
            )
            .is_ok()
        );
        let restricted = json!({"meta": {"security": [{"code": "R"}]}});
        assert!(!allow.may_send_resource(&owner(), "Encounter", &restricted, Some("RX1")));
    }

    #[test]
    fn filters_match_references() {
        let f = Filter {
            param: "patient".into(),
            value: "Patient/p1".into(),
        };
        assert!(f.matches(
            "Encounter",
            "e",
            Some(&json!({"subject": {"reference": "Patient/p1"}}))
        ));
        assert!(!f.matches(
            "Encounter",
            "e",
            Some(&json!({"subject": {"reference": "Patient/p2"}}))
        ));
        assert!(f.matches("Patient", "p1", None));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = SubscriptionSettings::default();
        assert_eq!(backoff(&s, 1).as_millis(), 1000);
        assert_eq!(backoff(&s, 3).as_millis(), 4000);
        assert_eq!(backoff(&s, 30).as_secs(), 300);
    }
}
