//! End-to-end tests of events: FHIR messaging, the NATS JetStream consumer, dead letters,
//! idempotency, ordering, and outbound subscriptions, against real PostgreSQL and NATS.

#[path = "../common/mod.rs"]
mod common;

mod group;
mod messaging;
mod nats;
mod subscriptions;
mod support;
