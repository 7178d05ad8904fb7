//! Turning verified token claims into a caller.
//!
//! User tokens follow NHS CIS2: `sub`, `selected_roleid`, and `nhsid_nrbac_roles[]` entries with
//! `person_roleid`, `org_code`, `role_code`, `activity_codes`; only the selected role counts.
//! System tokens (a trust's back-end) carry `client_id` (or `azp`/`sub`) and `ods_code`.

use serde_json::Value;

use super::principal::{Caller, OdsCode, Principal, SystemCaller, UserCaller};

fn string<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

pub fn caller_from_claims(claims: &Value) -> Result<Caller, String> {
    let issuer = string(claims, "iss").unwrap_or_default().to_string();
    let token_id = string(claims, "jti").map(str::to_string);
    let scopes = strings(claims.get("scope"));
    let principal = if let Some(selected) = string(claims, "selected_roleid") {
        let user_id = string(claims, "sub")
            .ok_or("a user token must carry sub (the user's id)")?
            .to_string();
        let roles = claims
            .get("nhsid_nrbac_roles")
            .and_then(Value::as_array)
            .ok_or("a user token must carry nhsid_nrbac_roles")?;
        let role = roles
            .iter()
            .find(|r| string(r, "person_roleid") == Some(selected))
            .ok_or_else(|| {
                format!("selected role {selected} is not among the token's nhsid_nrbac_roles")
            })?;
        let role_code = string(role, "role_code")
            .ok_or("the selected role has no role_code")?
            .to_string();
        let org = string(role, "org_code")
            .and_then(OdsCode::parse)
            .ok_or("the selected role has no valid org_code (ODS code)")?;
        Principal::User(UserCaller {
            user_id,
            name: string(claims, "name").map(str::to_string),
            role_profile_id: selected.to_string(),
            role_code,
            org,
            activities: strings(role.get("activity_codes")),
            scopes,
            client_id: string(claims, "azp")
                .or_else(|| string(claims, "client_id"))
                .map(str::to_string),
        })
    } else if let Some(ods) = string(claims, "ods_code") {
        let ods_code =
            OdsCode::parse(ods).ok_or_else(|| format!("ods_code '{ods}' is not an ODS code"))?;
        let client_id = string(claims, "client_id")
            .or_else(|| string(claims, "azp"))
            .or_else(|| string(claims, "sub"))
            .ok_or("a system token must carry client_id")?
            .to_string();
        Principal::System(SystemCaller {
            client_id,
            ods_code,
            scopes,
        })
    } else {
        return Err(
            "the token names neither a selected role (user) nor an ods_code (system)".into(),
        );
    };
    Ok(Caller {
        principal,
        token_id,
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_claims_use_the_selected_role_only() {
        let claims = json!({
            "iss": "i", "sub": "555021935107", "selected_roleid": "2",
            "nhsid_nrbac_roles": [
                {"person_roleid": "1", "org_code": "RX1", "role_code": "S0080:G0450:R5080"},
                {"person_roleid": "2", "org_code": "A81001", "role_code": "S8000:G8000:R8000",
                 "activity_codes": ["B0360", "B0380"]}
            ]
        });
        let caller = caller_from_claims(&claims).unwrap();
        let Principal::User(u) = &caller.principal else {
            panic!("user expected")
        };
        assert_eq!(u.org.as_str(), "A81001");
        assert_eq!(u.job_role(), "R8000");
        assert_eq!(u.activities, vec!["B0360", "B0380"]);
        assert_eq!(caller.kind(), "user");
    }

    #[test]
    fn unknown_selected_role_is_refused() {
        let claims = json!({"sub": "u", "selected_roleid": "9", "nhsid_nrbac_roles": []});
        assert!(caller_from_claims(&claims).is_err());
    }

    #[test]
    fn system_claims_name_the_trust() {
        let claims = json!({"client_id": "rx1-pas", "ods_code": "rx1", "scope": "system/*.cruds"});
        let caller = caller_from_claims(&claims).unwrap();
        assert_eq!(caller.org().as_str(), "RX1");
        assert_eq!(caller.id(), "rx1-pas");
        let Principal::System(s) = &caller.principal else {
            panic!()
        };
        assert_eq!(s.scopes, vec!["system/*.cruds"]);
    }

    #[test]
    fn tokens_without_role_or_ods_are_refused() {
        assert!(caller_from_claims(&json!({"sub": "x"})).is_err());
    }
}
