//! OperationOutcome issues: the one shape every error, warning and validation finding takes.

use serde_json::{Value, json};

/// `OperationOutcome.issue.severity` (required binding `issue-severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (required binding `issue-type`); only the codes shcr emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Extension,
    Conflict,
    Exception,
    Transient,
    Throttled,
    Informational,
    Incomplete,
    TooCostly,
    BusinessRule,
    Timeout,
    Suspended,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::TooLong => "too-long",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Extension => "extension",
            IssueType::Conflict => "conflict",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Throttled => "throttled",
            IssueType::Informational => "informational",
            IssueType::Incomplete => "incomplete",
            IssueType::TooCostly => "too-costly",
            IssueType::BusinessRule => "business-rule",
            IssueType::Timeout => "timeout",
            IssueType::Suspended => "suspended",
        }
    }
}

/// One finding. `location` is a FHIRPath expression into the offending resource
/// (e.g. `Patient.name[0].given[1]`), so a trust's engineer can find the element.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
    pub location: Option<String>,
}

impl Issue {
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            location: None,
        }
    }

    pub fn warning(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Warning,
            code,
            diagnostics: diagnostics.into(),
            location: None,
        }
    }

    pub fn information(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code,
            diagnostics: diagnostics.into(),
            location: None,
        }
    }

    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    pub fn is_error(&self) -> bool {
        matches!(self.severity, Severity::Error | Severity::Fatal)
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "diagnostics": self.diagnostics,
        });
        if let Some(location) = &self.location {
            // `location` is deprecated in R4 in favour of `expression`; send both for older clients.
            issue["expression"] = json!([location]);
            issue["location"] = json!([location]);
        }
        issue
    }
}

/// Builds an OperationOutcome resource from issues (an empty list yields one informational issue,
/// because R4 requires at least one).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![Issue::information(IssueType::Informational, "All OK").to_json()]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_carries_location_as_expression() {
        let oo =
            operation_outcome(
                &[Issue::error(IssueType::Value, "bad date").at("Patient.birthDate")],
            );
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.birthDate");
        assert_eq!(oo["issue"][0]["severity"], "error");
        assert_eq!(oo["issue"][0]["code"], "value");
    }

    #[test]
    fn empty_outcome_still_has_an_issue() {
        let oo = operation_outcome(&[]);
        assert_eq!(oo["issue"].as_array().unwrap().len(), 1);
    }
}
