//! Why a message was not applied, and whether trying again can help.

use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::interactions;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct MessageError {
    /// True when a retry may succeed (database unavailable, a lost race, the token issuer
    /// unreachable); false when the message itself is at fault and must be dead-lettered.
    pub transient: bool,
    /// Short stable class for dead-letter listings and metrics: `invalid`, `forbidden`,
    /// `unknown-event`, `unauthenticated`, `conflict`, `storage`, `exhausted`, …
    pub reason_code: &'static str,
    /// HTTP status when answered over REST.
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl MessageError {
    pub fn permanent(reason_code: &'static str, status: u16, issues: Vec<Issue>) -> MessageError {
        MessageError {
            transient: false,
            reason_code,
            status,
            issues,
        }
    }

    pub fn transient(reason_code: &'static str, diagnostics: impl Into<String>) -> MessageError {
        MessageError {
            transient: true,
            reason_code,
            status: 503,
            issues: vec![Issue::error(IssueType::Transient, diagnostics)],
        }
    }

    pub fn forbidden(location: Option<&str>, diagnostics: impl Into<String>) -> MessageError {
        let mut issue = Issue::error(IssueType::Forbidden, diagnostics);
        issue.location = location.map(str::to_string);
        MessageError::permanent("forbidden", 403, vec![issue])
    }

    pub fn outcome(&self) -> serde_json::Value {
        operation_outcome(&self.issues)
    }

    pub fn summary(&self) -> String {
        self.issues
            .iter()
            .map(|i| match &i.location {
                Some(l) => format!("{l}: {}", i.diagnostics),
                None => i.diagnostics.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl From<interactions::Error> for MessageError {
    fn from(e: interactions::Error) -> Self {
        let status = e.status();
        match &e {
            interactions::Error::Store(StoreError::Conflict(_)) => MessageError {
                transient: true,
                reason_code: "conflict",
                status,
                issues: e.issues(),
            },
            interactions::Error::Store(err) => {
                // Database details stay in the log, as for REST errors.
                tracing::error!(error = %err, "storage failure while applying a message");
                MessageError {
                    transient: true,
                    reason_code: "storage",
                    status: 503,
                    issues: e.issues(),
                }
            }
            _ if status >= 500 => MessageError {
                transient: true,
                reason_code: "storage",
                status,
                issues: e.issues(),
            },
            interactions::Error::Located { status: 403, .. } => {
                MessageError::permanent("forbidden", 403, e.issues())
            }
            _ => MessageError::permanent("invalid", status, e.issues()),
        }
    }
}

impl From<StoreError> for MessageError {
    fn from(e: StoreError) -> Self {
        interactions::Error::Store(e).into()
    }
}

impl From<sqlx::Error> for MessageError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e).into()
    }
}
