//! The one place errors become HTTP responses: an OperationOutcome with the right status.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};

use crate::access::AuthError;
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::interactions;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Interaction(#[from] interactions::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Errors of the HTTP exchange itself (media type, size, method, JSON syntax).
    #[error("{status}: {}", issue.diagnostics)]
    Http { status: StatusCode, issue: Issue },
}

impl ApiError {
    pub fn http(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> ApiError {
        ApiError::Http {
            status,
            issue: Issue::error(code, diagnostics),
        }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> ApiError {
        Self::http(StatusCode::BAD_REQUEST, IssueType::Invalid, diagnostics)
    }

    fn issues(&self) -> Vec<Issue> {
        match self {
            ApiError::Interaction(e) => e.issues(),
            ApiError::Auth(e @ AuthError::IssuerUnavailable(_)) => {
                vec![Issue::error(IssueType::Transient, e.to_string())]
            }
            ApiError::Auth(e) => vec![Issue::error(IssueType::Login, e.to_string())],
            ApiError::Http { issue, .. } => vec![issue.clone()],
        }
    }
}

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Interaction(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ApiError::Auth(AuthError::IssuerUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::Http { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // Diagnostics can quote identifiers from the request (NHS numbers in criteria), so the
        // log gets the issue codes only; the storage error text carries no resource content.
        let issues = self.issues();
        let codes: Vec<&str> = issues.iter().map(|i| i.code.code()).collect();
        match self {
            ApiError::Interaction(interactions::Error::Store(e)) => {
                tracing::error!(error = %e, "storage failure");
            }
            _ if status.is_server_error() => tracing::error!(codes = ?codes, "request failed"),
            _ => tracing::debug!(status = status.as_u16(), codes = ?codes, "request refused"),
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, FHIR_JSON));
        if let ApiError::Auth(e) = self {
            let value = match e {
                AuthError::Missing => "Bearer realm=\"shcr\"".to_string(),
                other => format!(
                    "Bearer realm=\"shcr\", error=\"invalid_token\", error_description=\"{}\"",
                    other.to_string().replace('"', "'")
                ),
            };
            response.insert_header((header::WWW_AUTHENTICATE, value));
        }
        response.body(operation_outcome(&issues).to_string())
    }
}
