//! shcr against a real OpenID Connect provider: the npm package `oidc-provider` on loopback
//! (tests/oidc/server.mjs), started by each test. Discovery, client-credentials tokens for a
//! trust, user tokens with CIS2-style role claims, key rotation and withdrawal, wrong audience.
//!
//! Needs Node.js and `npm ci --prefix tests/oidc` (scripts/test.sh runs scripts/oidc-provider.sh,
//! which does it).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestApp;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// shcr's resource at the provider (audience `shcr`) and another API's (audience `other-api`).
const OTHER_API: &str = "https://other.test";
/// How long shcr trusts a fetched key set in these tests: short, so withdrawal is observable.
const JWKS_MAX_AGE: Duration = Duration::from_secs(2);

struct Provider {
    issuer: String,
    http: reqwest::Client,
    // Killed on drop; its standard input closing also ends it.
    _child: Child,
}

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Provider {
    async fn start() -> Provider {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "the OIDC test provider is not installed: run scripts/oidc-provider.sh \
             (npm ci --prefix tests/oidc), as scripts/test.sh does"
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its warnings (Node version, in-memory adapter) are expected; errors show with TEST_LOG.
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node (Node.js 20 or later is needed): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("the OIDC provider printed its issuer within 30 s")
            .expect("read the provider's first line");
        // Keep draining: a closed pipe would kill the provider at its next line of output.
        tokio::spawn(async move {
            let mut sink = String::new();
            while reader.read_line(&mut sink).await.is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let started: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("provider's first line is not JSON ({e}): {line:?}"));
        Provider {
            issuer: started["issuer"].as_str().expect("issuer").to_string(),
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    async fn token(&self, client: (&str, &str), form: &[(&str, &str)]) -> String {
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client.0, Some(client.1))
            .form(form)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = response.json().await.expect("token response JSON");
        assert_eq!(status, 200, "token endpoint: {body}");
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A trust's system token (client credentials), for shcr or for `resource`.
    async fn trust_token(&self, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        self.token(("rx1-pas", "rx1-pas-secret"), &form).await
    }

    /// A clinician's token with CIS2-style role claims, the role `role` selected.
    async fn user_token(&self, role: &str) -> String {
        self.token(
            ("portal", "portal-secret"),
            &[
                ("grant_type", "urn:shcr:test:grant-type:user"),
                ("account", "555021935107"),
                ("role", role),
            ],
        )
        .await
    }

    /// Publishes exactly `keys` and signs new tokens with `sign`.
    async fn set_keys(&self, keys: &[&str], sign: &str) {
        let response = self
            .http
            .post(format!("{}/_test/keys", self.issuer))
            .json(&json!({ "keys": keys, "sign": sign }))
            .send()
            .await
            .expect("key change");
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

async fn shcr_trusting(provider: &Provider) -> TestApp {
    let issuer = provider.issuer.clone();
    TestApp::spawn_with(move |settings| {
        settings.auth.issuer = Some(issuer);
        settings.auth.jwks_max_age_seconds = JWKS_MAX_AGE.as_secs();
    })
    .await
}

/// Status and diagnostics of a read with `token`.
async fn read_with(app: &TestApp, token: &str) -> (u16, String) {
    let response = app
        .client
        .get(app.url("Patient/not-there"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Accepted means authenticated: the read itself answers 404 for the absent Patient.
async fn assert_accepted(app: &TestApp, token: &str, what: &str) {
    let (status, diagnostics) = read_with(app, token).await;
    assert_eq!(status, 404, "{what} should be accepted: {diagnostics}");
}

async fn assert_refused(app: &TestApp, token: &str, what: &str, expect: &str) {
    let (status, diagnostics) = read_with(app, token).await;
    assert_eq!(status, 401, "{what} should be refused: {diagnostics}");
    assert!(
        diagnostics.contains(expect),
        "{what}: '{diagnostics}' should mention '{expect}'"
    );
}

async fn create_patient(app: &TestApp, token: &str) -> (String, String, Option<String>) {
    let response = app
        .client
        .post(app.url("Patient"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/fhir+json")
        .body(common::patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    sqlx::query_as("SELECT author_kind, author_id, author_org FROM resource_version")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn discovery_and_keys_are_served_by_the_real_provider() {
    let provider = Provider::start().await;
    let discovery: Value = provider
        .http
        .get(format!(
            "{}/.well-known/openid-configuration",
            provider.issuer
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    let grants = discovery["grant_types_supported"].to_string();
    assert!(grants.contains("client_credentials"), "{grants}");
    let jwks: Value = provider
        .http
        .get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "test-a");
    assert!(jwks["keys"][0].get("d").is_none(), "private key published");
    // shcr finds the keys through that discovery document.
    let app = shcr_trusting(&provider).await;
    assert_accepted(&app, &provider.trust_token(None).await, "a trust token").await;
}

#[tokio::test]
async fn trust_client_credentials_token_is_accepted_and_names_the_trust() {
    let provider = Provider::start().await;
    let app = shcr_trusting(&provider).await;
    let token = provider.trust_token(None).await;
    let author = create_patient(&app, &token).await;
    assert_eq!(
        author,
        ("system".into(), "rx1-pas".into(), Some("RX1".into()))
    );
}

#[tokio::test]
async fn user_token_with_cis2_roles_is_accepted_for_the_selected_role() {
    let provider = Provider::start().await;
    let app = shcr_trusting(&provider).await;
    // The user holds two roles; the token's selected role (at GP practice A81001) is the one
    // shcr acts on, not the other (at trust RX1).
    let token = provider.user_token("090123456789").await;
    let author = create_patient(&app, &token).await;
    assert_eq!(
        author,
        ("user".into(), "555021935107".into(), Some("A81001".into()))
    );
}

#[tokio::test]
async fn token_for_another_audience_is_refused() {
    let provider = Provider::start().await;
    let app = shcr_trusting(&provider).await;
    let token = provider.trust_token(Some(OTHER_API)).await;
    assert_refused(&app, &token, "a token for another API", "audience").await;
}

#[tokio::test]
async fn rotated_key_is_accepted_and_withdrawn_key_is_refused() {
    let provider = Provider::start().await;
    let app = shcr_trusting(&provider).await;
    let old = provider.trust_token(None).await;
    assert_accepted(&app, &old, "a token signed by the first key").await;

    // Rotation: the provider publishes a second key and signs with it. shcr has not seen its
    // kid, so it fetches the keys at once instead of waiting for its copy to age.
    provider.set_keys(&["a", "b"], "b").await;
    let new = provider.trust_token(None).await;
    assert_ne!(new, old);
    assert_accepted(&app, &new, "a token signed by the new key").await;
    assert_accepted(&app, &old, "the old key's token while still published").await;

    // Withdrawal: the first key is gone. shcr trusts its copy of the key set for
    // jwks_max_age_seconds; after that the old key's tokens are refused, including the one it
    // verified and cached a moment ago.
    provider.set_keys(&["b"], "b").await;
    let withdrawn = Instant::now();
    tokio::time::sleep(JWKS_MAX_AGE + Duration::from_millis(200)).await;
    assert_refused(
        &app,
        &old,
        "a token signed by a withdrawn key",
        "does not publish",
    )
    .await;
    assert!(
        withdrawn.elapsed() < JWKS_MAX_AGE + Duration::from_secs(5),
        "withdrawal took effect promptly"
    );
    assert_accepted(&app, &new, "the new key's token").await;
    assert_accepted(
        &app,
        &provider.trust_token(None).await,
        "a fresh token after withdrawal",
    )
    .await;
}

#[tokio::test]
async fn access_decisions_follow_the_external_providers_claims() {
    let provider = Provider::start().await;
    let app = shcr_trusting(&provider).await;
    // Tokens first: the provider closes idle keep-alive connections while data is written.
    // The same person in two roles: a clinician at GP practice A81001, and a role at RX1 with
    // no clinical activities.
    let gp = provider.user_token("090123456789").await;
    let other = provider.user_token("090123456790").await;
    let trust = provider.trust_token(None).await;
    let create = |body: Value| {
        let (app, trust) = (&app, &trust);
        async move {
            let r = app
                .client
                .post(app.url(body["resourceType"].as_str().unwrap()))
                .header(AUTHORIZATION, format!("Bearer {trust}"))
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mut registered = common::patient("9434765919");
    registered["generalPractitioner"] = json!([{"identifier": {
        "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}}]);
    let registered = create(registered).await;
    let stranger = create(common::patient("9434765919")).await;
    let read = |token: String, path: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url(&path))
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The selected role decides: the GP practice sees its registered patient only.
    assert_eq!(read(gp.clone(), format!("Patient/{registered}")).await, 200);
    assert_eq!(read(gp, format!("Patient/{stranger}")).await, 404);
    // In the other role the person may not read clinical data at all.
    assert_eq!(read(other, format!("Patient/{registered}")).await, 403);
    // The trust's system reads what it wrote.
    assert_eq!(
        read(trust.clone(), format!("Patient/{stranger}")).await,
        200
    );
}
