//! A development token issuer for the demo and tests: its own P-256 signing key, a discovery
//! document and JWKS (served under `/dev-issuer` when enabled), and token minting for
//! `shcr token`. Off unless `dev_issuer.enabled` is set; never for production.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::Serialize;
use serde_json::{Value, json};

/// The client id of the development clinician portal that dev user tokens name (`azp`).
pub const DEV_PORTAL_CLIENT: &str = "shcr-dev-portal";

pub struct DevIssuer {
    encoding: EncodingKey,
    jwk: Jwk,
}

/// What a minted token says about its bearer.
#[derive(Debug, Clone)]
pub enum Grant {
    /// A trust's system.
    System {
        client_id: String,
        ods_code: String,
        scopes: Vec<String>,
    },
    /// A person in a national RBAC role at an organisation.
    User {
        user_id: String,
        name: Option<String>,
        role_code: String,
        org: String,
        activities: Vec<String>,
        scopes: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl TokenClaims {
    pub fn new(issuer: &str, audience: &str, grant: &Grant, ttl_seconds: i64) -> TokenClaims {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut extra = serde_json::Map::new();
        let sub = match grant {
            Grant::System {
                client_id,
                ods_code,
                scopes,
            } => {
                extra.insert("client_id".into(), json!(client_id));
                extra.insert("ods_code".into(), json!(ods_code));
                extra.insert("scope".into(), json!(scopes.join(" ")));
                client_id.clone()
            }
            Grant::User {
                user_id,
                name,
                role_code,
                org,
                activities,
                scopes,
            } => {
                // CIS2 shape: the selected role points into nhsid_nrbac_roles.
                let role_id = format!("{user_id}-{org}");
                extra.insert("selected_roleid".into(), json!(role_id));
                extra.insert(
                    "nhsid_nrbac_roles".into(),
                    json!([{
                        "person_roleid": role_id,
                        "org_code": org,
                        "role_code": role_code,
                        "activity_codes": activities,
                    }]),
                );
                if let Some(name) = name {
                    extra.insert("name".into(), json!(name));
                }
                extra.insert("scope".into(), json!(scopes.join(" ")));
                // The portal the person signed in through, as a real OIDC provider would say.
                extra.insert("azp".into(), json!(DEV_PORTAL_CLIENT));
                user_id.clone()
            }
        };
        TokenClaims {
            iss: issuer.to_string(),
            aud: audience.to_string(),
            sub,
            iat: now,
            exp: now + ttl_seconds,
            jti: uuid::Uuid::new_v4().to_string(),
            extra,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("dev issuer key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("dev issuer: {0}")]
    Crypto(String),
}

impl DevIssuer {
    fn from_secret(
        secret: &p256::SecretKey,
        kid: Option<&str>,
    ) -> Result<DevIssuer, DevIssuerError> {
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| DevIssuerError::Crypto(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| DevIssuerError::Crypto(e.to_string()))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|e| DevIssuerError::Crypto(e.to_string()))?;
        let kid = match kid {
            Some(k) => k.to_string(),
            None => jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|e| DevIssuerError::Crypto(e.to_string()))?,
        };
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(DevIssuer { encoding, jwk })
    }

    /// A fresh in-memory key.
    pub fn generate() -> DevIssuer {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        Self::from_secret(&secret, None).expect("fresh P-256 key")
    }

    /// A fresh key that claims another key's id: tokens it signs must fail verification.
    pub fn generate_impostor(kid: &str) -> DevIssuer {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        Self::from_secret(&secret, Some(kid)).expect("fresh P-256 key")
    }

    /// Loads the key from `path`, creating it (mode 0600) on first use so tokens survive restarts.
    pub fn load_or_create(path: &Path) -> Result<DevIssuer, DevIssuerError> {
        let err = |message: String| DevIssuerError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let secret = p256::SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| err(format!("not a PKCS#8 P-256 key: {e}")))?;
            return Self::from_secret(&secret, None);
        }
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| err(e.to_string()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        write_private(path, pem.as_bytes()).map_err(|e| err(e.to_string()))?;
        Self::from_secret(&secret, None)
    }

    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    pub fn discovery(&self, issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": [],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "client_id", "ods_code", "selected_roleid", "nhsid_nrbac_roles", "scope"],
        })
    }

    pub fn mint(&self, claims: &TokenClaims) -> Result<String, DevIssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid().to_string());
        encode(&header, claims, &self.encoding).map_err(|e| DevIssuerError::Crypto(e.to_string()))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
