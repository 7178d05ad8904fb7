//! Errors of FHIR interactions, each with its HTTP status and OperationOutcome issues.

use crate::fhir::outcome::{Issue, IssueType};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource or request is invalid (400); issues carry FHIRPath locations.
    #[error("invalid: {}", summary(.0))]
    Invalid(Vec<Issue>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} is deleted")]
    Gone(String),
    #[error("unknown resource type {0}")]
    UnknownType(String),
    /// If-Match did not match, or a conditional operation matched more than one resource.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The caller may not make this change (e.g. write under another trust's ODS code).
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An error of one Bundle entry, re-located to that entry but keeping its status.
    #[error("{}", summary(.issues))]
    Located { status: u16, issues: Vec<Issue> },
}

fn summary(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| match &i.location {
            Some(l) => format!("{l}: {}", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(code: IssueType, diagnostics: impl Into<String>) -> Error {
        Error::Invalid(vec![Issue::error(code, diagnostics)])
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotFound(_) | Error::UnknownType(_) => 404,
            Error::Gone(_) => 410,
            Error::PreconditionFailed(_) => 412,
            Error::Conflict(_) => 409,
            Error::NotSupported(_) => 400,
            Error::Forbidden(_) => 403,
            Error::Store(StoreError::Conflict(_)) => 409,
            Error::Store(_) => 500,
            Error::Located { status, .. } => *status,
        }
    }

    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Error::Invalid(issues) => issues.clone(),
            Error::NotFound(what) => vec![Issue::error(
                IssueType::NotFound,
                format!("{what} is not known to this server"),
            )],
            Error::Gone(what) => vec![Issue::error(
                IssueType::Deleted,
                format!("{what} has been deleted"),
            )],
            Error::UnknownType(t) => vec![Issue::error(
                IssueType::NotSupported,
                format!("'{t}' is not a FHIR R4 resource type"),
            )],
            Error::PreconditionFailed(msg) => {
                vec![Issue::error(IssueType::Conflict, msg.clone())]
            }
            Error::Conflict(msg) => vec![Issue::error(IssueType::Conflict, msg.clone())],
            Error::NotSupported(msg) => vec![Issue::error(IssueType::NotSupported, msg.clone())],
            Error::Forbidden(msg) => vec![Issue::error(IssueType::Forbidden, msg.clone())],
            Error::Store(StoreError::Conflict(what)) => vec![Issue::error(
                IssueType::Conflict,
                format!("{what} was changed by a concurrent request; retry"),
            )],
            // Database detail stays in the server log, not in the response.
            Error::Store(_) => vec![Issue::error(
                IssueType::Exception,
                "internal storage error; the request was not applied",
            )],
            Error::Located { issues, .. } => issues.clone(),
        }
    }

    /// Re-roots issue locations at a Bundle entry: a resource-relative `Patient.name[0]` becomes
    /// `Bundle.entry[3].resource.name[0]`; issues without a location point at the entry.
    pub fn at_entry(self, index: usize) -> Error {
        let entry = format!("Bundle.entry[{index}]");
        match self {
            Error::Invalid(issues) => Error::Invalid(
                issues
                    .into_iter()
                    .map(|mut i| {
                        i.location = Some(match i.location.take() {
                            Some(loc) if loc.starts_with("Bundle.entry[") => loc,
                            Some(loc) => match loc.find('.') {
                                Some(dot) => format!("{entry}.resource{}", &loc[dot..]),
                                None => format!("{entry}.resource"),
                            },
                            None => entry.clone(),
                        });
                        i
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}
