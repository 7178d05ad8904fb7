//! The authenticated caller of a request, as later authorisation and audit see it.

use serde::Serialize;

use crate::store::Author;

/// An ODS organisation or site code (`RX1`, `RX101`, `A81001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OdsCode(String);

impl OdsCode {
    pub fn parse(s: &str) -> Option<OdsCode> {
        let s = s.trim().to_ascii_uppercase();
        let ok = (3..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then_some(OdsCode(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OdsCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A contributing trust's system (application-restricted access).
#[derive(Debug, Clone, Serialize)]
pub struct SystemCaller {
    pub client_id: String,
    pub ods_code: OdsCode,
    pub scopes: Vec<String>,
}

/// A person (user-restricted access), acting in the national RBAC role selected at login.
#[derive(Debug, Clone, Serialize)]
pub struct UserCaller {
    /// CIS2 UUID (`sub`).
    pub user_id: String,
    pub name: Option<String>,
    /// Role profile id (`selected_roleid`).
    pub role_profile_id: String,
    /// Full national RBAC role code, e.g. `S8000:G8000:R8000`.
    pub role_code: String,
    /// Organisation of the selected role.
    pub org: OdsCode,
    /// National RBAC activity codes of the selected role (B0360 …).
    pub activities: Vec<String>,
    pub scopes: Vec<String>,
    /// The portal (OAuth client) the person signed in through: the token's `azp` or
    /// `client_id` claim. The API consumer registry governs that client.
    pub client_id: Option<String>,
}

impl UserCaller {
    /// The job role part of the role code (`R8000` of `S8000:G8000:R8000`).
    pub fn job_role(&self) -> &str {
        self.role_code.rsplit(':').next().unwrap_or(&self.role_code)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Principal {
    System(SystemCaller),
    User(UserCaller),
}

#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub principal: Principal,
    /// `jti` of the token, for audit.
    pub token_id: Option<String>,
    pub issuer: String,
}

impl Caller {
    pub fn kind(&self) -> &'static str {
        match self.principal {
            Principal::System(_) => "system",
            Principal::User(_) => "user",
        }
    }

    /// Client id or user id: not patient data, safe to log.
    pub fn id(&self) -> &str {
        match &self.principal {
            Principal::System(s) => &s.client_id,
            Principal::User(u) => &u.user_id,
        }
    }

    /// The registered API client making the call: a system's own client id, or the portal a
    /// person signed in through (`None` when a user token names no client).
    pub fn client_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::System(s) => Some(&s.client_id),
            Principal::User(u) => u.client_id.as_deref(),
        }
    }

    pub fn scopes(&self) -> &[String] {
        match &self.principal {
            Principal::System(s) => &s.scopes,
            Principal::User(u) => &u.scopes,
        }
    }

    pub fn org(&self) -> &OdsCode {
        match &self.principal {
            Principal::System(s) => &s.ods_code,
            Principal::User(u) => &u.org,
        }
    }

    pub fn author(&self, request_id: Option<&str>) -> Author {
        Author {
            kind: self.kind(),
            id: self.id().to_string(),
            org: Some(self.org().to_string()),
            request_id: request_id.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_normalise_and_reject_junk() {
        assert_eq!(OdsCode::parse(" rx1 ").unwrap().as_str(), "RX1");
        assert!(OdsCode::parse("A81001").is_some());
        assert!(OdsCode::parse("R1").is_none());
        assert!(OdsCode::parse("RX-1").is_none());
    }
}
