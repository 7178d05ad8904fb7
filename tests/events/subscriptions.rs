//! Outbound subscriptions.
