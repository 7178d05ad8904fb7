//! Bearer-token verification against an OIDC issuer: discovery document, JWKS (cached, refreshed
//! on an unknown key id and after a maximum age), signature, issuer, audience, expiry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use super::claims::caller_from_claims;
use super::principal::Caller;
use crate::config::AuthSettings;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The issuer's discovery document or keys could not be fetched: not the caller's fault.
    #[error("cannot verify tokens now: {0}")]
    IssuerUnavailable(String),
}

/// Asymmetric algorithms only: a shared-secret (HS*) token could be forged by anyone holding the
/// secret, and `none` is never acceptable.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// A forced refresh for an unknown `kid` happens at most this often, so garbage tokens cannot
/// make us hammer the issuer. Only forced refreshes count: a routine refresh must not delay the
/// first token signed with a key the issuer has just added.
const MIN_FORCED_REFRESH: Duration = Duration::from_secs(10);

/// A verified token is trusted again without re-checking its signature for at most this long
/// (never past its own `exp`, and never past the freshness of the key set it was checked
/// against): signature checks dominate the cost of a small read.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 10_000;

type TokenDigest = [u8; 32];

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

pub struct TokenVerifier {
    issuer: String,
    audience: String,
    leeway: u64,
    max_age: Duration,
    http: reqwest::Client,
    keys: RwLock<Option<Keys>>,
    /// When a refresh was last forced by an unknown `kid`.
    refresh: Mutex<Option<Instant>>,
    verified: std::sync::Mutex<HashMap<TokenDigest, (Caller, Instant)>>,
}

impl TokenVerifier {
    pub fn new(issuer: String, settings: &AuthSettings) -> TokenVerifier {
        TokenVerifier {
            issuer: issuer.trim_end_matches('/').to_string(),
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
            max_age: Duration::from_secs(settings.jwks_max_age_seconds),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            keys: RwLock::new(None),
            refresh: Mutex::new(None),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` tokens must carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    async fn fetch_keys(&self) -> Result<JwkSet, AuthError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::IssuerUnavailable(format!("{what} of issuer {}: {e}", self.issuer))
        };
        let discovery_url = format!("{}/.well-known/openid-configuration", self.issuer);
        let discovery: Value = self
            .http
            .get(&discovery_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("discovery document", &e))?
            .json()
            .await
            .map_err(|e| unavailable("discovery document", &e))?;
        let advertised = discovery
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or("");
        if advertised.trim_end_matches('/') != self.issuer {
            return Err(AuthError::IssuerUnavailable(format!(
                "discovery document at {discovery_url} names issuer '{advertised}', not '{}'",
                self.issuer
            )));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| unavailable("discovery document", &"no jwks_uri"))?;
        self.http
            .get(jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("JWKS", &e))?
            .json::<JwkSet>()
            .await
            .map_err(|e| unavailable("JWKS", &e))
    }

    /// Refreshes the key set if it is stale, or (rate-limited) when `force` is set.
    async fn refresh_keys(&self, force: bool) -> Result<(), AuthError> {
        let mut last = self.refresh.lock().await;
        let fresh = self
            .keys
            .read()
            .await
            .as_ref()
            .is_some_and(|k| k.fetched.elapsed() < self.max_age);
        let recently_forced = last.is_some_and(|t| t.elapsed() < MIN_FORCED_REFRESH);
        if fresh && (!force || recently_forced) {
            return Ok(());
        }
        let set = self.fetch_keys().await?;
        let changed = self.keys.read().await.as_ref().map(|k| &k.set) != Some(&set);
        if changed {
            // Tokens verified with a key the issuer no longer publishes must be checked again.
            self.verified.lock().expect("cache lock").clear();
        }
        *self.keys.write().await = Some(Keys {
            set,
            fetched: Instant::now(),
        });
        if force {
            *last = Some(Instant::now());
        }
        Ok(())
    }

    async fn keys_fresh(&self) -> bool {
        self.keys
            .read()
            .await
            .as_ref()
            .is_some_and(|k| k.fetched.elapsed() < self.max_age)
    }

    async fn find_key(&self, kid: Option<&str>) -> Option<jsonwebtoken::jwk::Jwk> {
        let guard = self.keys.read().await;
        let set = &guard.as_ref()?.set;
        match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        use sha2::Digest;
        let digest: TokenDigest = sha2::Sha256::digest(token.as_bytes()).into();
        // A cached verdict is only as good as the key set it was reached with. Once that set is
        // older than jwks_max_age, fetch it again before trusting any cached token: a changed set
        // clears the cache, so a key the issuer withdraws stops working within jwks_max_age
        // even for tokens verified a moment before (the cache alone would keep them for 60 s).
        if !self.keys_fresh().await {
            self.refresh_keys(false).await?;
        }
        if let Some((caller, until)) = self.verified.lock().expect("cache lock").get(&digest)
            && Instant::now() < *until
        {
            return Ok(caller.clone());
        }
        let (caller, exp, _) = self.verify_uncached(token, None).await?;
        let now_unix = time::OffsetDateTime::now_utc().unix_timestamp();
        let remaining = Duration::from_secs(exp.saturating_sub(now_unix).max(0) as u64);
        let mut cache = self.verified.lock().expect("cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(
            digest,
            (caller.clone(), Instant::now() + remaining.min(CACHE_TTL)),
        );
        Ok(caller)
    }

    /// Verifies a token that travelled with a queued message: signature, issuer and audience as
    /// usual, but `exp`/`nbf` are judged at `as_of` (when the broker accepted the message), not
    /// now, so a message redelivered or replayed after its token expired is still attributable
    /// to the trust that sent it. Never for requests: those must be valid when they arrive.
    /// Returns the caller with the token's `exp` and `nbf`, so a caller that caches the result
    /// can judge later messages carrying the same token against their own publish times.
    pub async fn verify_as_of(
        &self,
        token: &str,
        as_of: time::OffsetDateTime,
    ) -> Result<(Caller, i64, Option<i64>), AuthError> {
        self.verify_uncached(token, Some(as_of.unix_timestamp()))
            .await
    }

    pub fn leeway_seconds(&self) -> u64 {
        self.leeway
    }

    async fn verify_uncached(
        &self,
        token: &str,
        as_of: Option<i64>,
    ) -> Result<(Caller, i64, Option<i64>), AuthError> {
        let header = decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "signing algorithm {:?} is not accepted",
                header.alg
            )));
        }
        self.refresh_keys(false).await?;
        let kid = header.kid.as_deref();
        let jwk = match self.find_key(kid).await {
            Some(jwk) => jwk,
            None => {
                self.refresh_keys(true).await?;
                self.find_key(kid).await.ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "token signed with a key the issuer does not publish (kid {})",
                        kid.unwrap_or("absent")
                    ))
                })?
            }
        };
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| AuthError::Invalid(format!("issuer key unusable: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway;
        if as_of.is_some() {
            validation.validate_exp = false;
            validation.validate_nbf = false;
        }
        let data = decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::InvalidSignature => "signature does not verify".to_string(),
                K::InvalidAudience => format!("audience is not '{}'", self.audience),
                K::InvalidIssuer => format!("issuer is not '{}'", self.issuer),
                K::ImmatureSignature => "token not yet valid (nbf)".to_string(),
                K::MissingRequiredClaim(c) => format!("required claim '{c}' missing"),
                K::InvalidAlgorithm => "algorithm does not match the key".to_string(),
                other => format!("{other:?}"),
            })
        })?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let nbf = data.claims.get("nbf").and_then(Value::as_i64);
        if let Some(at) = as_of {
            let leeway = self.leeway as i64;
            if exp + leeway < at {
                return Err(AuthError::Invalid(
                    "token had expired when the message was published".into(),
                ));
            }
            if let Some(nbf) = nbf
                && nbf - leeway > at
            {
                return Err(AuthError::Invalid(
                    "token was not yet valid when the message was published (nbf)".into(),
                ));
            }
        }
        Ok((
            caller_from_claims(&data.claims).map_err(AuthError::Invalid)?,
            exp,
            nbf,
        ))
    }
}
