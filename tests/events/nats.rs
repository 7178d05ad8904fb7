//! The NATS JetStream consumer.
