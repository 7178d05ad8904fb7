//! The one test harness: a fresh PostgreSQL database per test, the real application on a random
//! port, and tokens from the app's development issuer.
#![allow(dead_code)]

use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use shcr::access::dev_issuer::{DevIssuer, Grant, TokenClaims};
use shcr::config::Settings;
use shcr::startup::Application;
use sqlx::{Connection, PgConnection, PgPool};

/// Admin URL of the PostgreSQL server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(admin: &str, db: &str) -> String {
    let (server, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL has a database part");
    let query = admin
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{server}/{db}{query}")
}

/// A database that is dropped when the value goes out of scope.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin = admin_url();
        let name = format!("shcr_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL ({admin}): {e}; run scripts/test.sh, which starts one"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = with_database(&admin, &name);
        TestDatabase { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let admin = admin_url();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own to finish the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub origin: String,
    /// FHIR base, `http://127.0.0.1:PORT/fhir`.
    pub base: String,
    pub client: reqwest::Client,
    /// Direct database access to check what was (not) written.
    pub pool: PgPool,
    pub issuer_url: String,
    pub issuer: Arc<DevIssuer>,
    /// Where a test adds `/readyz` checks.
    pub readiness: shcr::api::health::Readiness,
    /// The store the server uses, for store functions the API does not expose.
    pub store: shcr::store::Store,
    pub search: Arc<shcr::search::indexer::SearchIndex>,
    handle: actix_web::dev::ServerHandle,
    _key_dir: tempfile::TempDir,
    // Dropped last: the database outlives the server and pool above.
    pub db: TestDatabase,
}

pub fn test_settings(db_url: &str, key_dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        database_url: Some(db_url.to_string()),
        port: 0,
        workers: Some(2),
        db_max_connections: 8,
        max_body_bytes: 256 * 1024,
        // In memory: each test starts with an empty database anyway.
        index_dir: None,
        ..Settings::default()
    };
    settings.dev_issuer.enabled = true;
    settings.dev_issuer.key_file = key_dir.join("dev-issuer.pem");
    settings
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDatabase::create().await;
        Self::start(db, adjust).await
    }

    /// A second server on an existing test database (that database is not dropped by it).
    pub async fn spawn_on(url: &str) -> TestApp {
        Self::spawn_on_with(url, |_| {}).await
    }

    pub async fn spawn_on_with(url: &str, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDatabase {
            name: String::new(),
            url: url.to_string(),
        };
        Self::start(db, adjust).await
    }

    async fn start(db: TestDatabase, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        // Server logs would drown the test output; TEST_LOG=1 shows them.
        if std::env::var_os("TEST_LOG").is_some() {
            shcr::telemetry::init("pretty");
        }
        let key_dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(&db.url, key_dir.path());
        adjust(&mut settings);
        let app = Application::build(settings)
            .await
            .expect("application starts");
        let origin = app.origin().to_string();
        let base = app.base_url();
        let issuer_url = app.issuer().to_string();
        let issuer = app.dev_issuer().expect("dev issuer enabled in tests");
        let pool = app.store().pool().clone();
        let store = app.store().clone();
        let readiness = app.readiness().clone();
        let search = app.search();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            readiness,
            store,
            origin,
            base,
            client: reqwest::Client::new(),
            pool,
            issuer_url,
            issuer,
            search,
            handle,
            _key_dir: key_dir,
            db,
        }
    }

    pub fn claims(&self, grant: &Grant) -> TokenClaims {
        TokenClaims::new(&self.issuer_url, "shcr", grant, 300)
    }

    pub fn mint(&self, claims: &TokenClaims) -> String {
        self.issuer.mint(claims).expect("mint")
    }

    /// A contributing trust's system token.
    pub fn trust_token(&self, ods: &str) -> String {
        self.mint(&self.claims(&Grant::System {
            client_id: format!("{}-pas", ods.to_lowercase()),
            ods_code: ods.to_string(),
            scopes: vec!["system/*.cruds".into()],
        }))
    }

    /// A clinician (R8000) at `org`.
    pub fn clinician_token(&self, org: &str) -> String {
        self.mint(&self.claims(&Grant::User {
            user_id: "555000000042".into(),
            name: Some("Dr Test".into()),
            role_code: "S8000:G8000:R8000".into(),
            org: org.to_string(),
            activities: vec!["B0360".into(), "B0380".into()],
            scopes: vec!["user/*.rs".into()],
        }))
    }

    /// A person in any national RBAC role (`S…:G…:R8004`, `R0001` …) at `org`.
    pub fn user_token(
        &self,
        user_id: &str,
        name: &str,
        role_code: &str,
        org: &str,
        activities: &[&str],
    ) -> String {
        self.mint(&self.claims(&Grant::User {
            user_id: user_id.into(),
            name: Some(name.into()),
            role_code: role_code.into(),
            org: org.to_string(),
            activities: activities.iter().map(|a| a.to_string()).collect(),
            scopes: vec!["user/*.rs".into()],
        }))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header(AUTHORIZATION, format!("Bearer {}", self.trust_token("RX1")))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::PUT, path)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    /// Creates a resource and returns the stored JSON.
    pub async fn create(&self, resource: &Value) -> Value {
        let t = resource["resourceType"].as_str().expect("resourceType");
        let response = self.post(t, resource).await;
        assert_eq!(response.status(), 201, "create {t}");
        response.json().await.expect("json")
    }

    /// Rows of resources clients write: the Provenance and Person resources the server derives
    /// from each write (src/provenance.rs, src/identity) are left out.
    pub async fn count(&self, sql_table: &str) -> i64 {
        let sql = match sql_table {
            "resource_version" => {
                "SELECT count(*) FROM resource_version WHERE resource_type NOT IN ('Provenance', 'Person')"
            }
            "resource_head" => {
                "SELECT count(*) FROM resource_head WHERE resource_type NOT IN ('Provenance', 'Person')"
            }
            "change_feed" => {
                "SELECT count(*) FROM change_feed WHERE resource_type NOT IN ('Provenance', 'Person')"
            }
            "resource_identifier" => {
                "SELECT count(*) FROM resource_identifier WHERE resource_type NOT IN ('Provenance', 'Person')"
            }
            other => panic!("unknown table {other}"),
        };
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Rows in every table a write touches: equal before and after a refused request.
    pub async fn write_footprint(&self) -> [i64; 4] {
        [
            self.count("resource_version").await,
            self.count("resource_head").await,
            self.count("change_feed").await,
            self.count("resource_identifier").await,
        ]
    }
}

impl TestApp {
    /// Stops this server but keeps its database for other servers; the returned value drops
    /// the database when it goes.
    pub async fn keep_database(mut self) -> TestDatabase {
        let db = std::mem::replace(
            &mut self.db,
            TestDatabase {
                name: String::new(),
                url: String::new(),
            },
        );
        self.stop().await;
        db
    }

    /// Stops the server and the indexer and waits until the index folder is released.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.search.shutdown().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stopping is best effort; the database drop terminates remaining connections.
        drop(handle.stop(false));
        self.search.request_stop();
    }
}

impl TestApp {
    /// Runs a search (path relative to the base) and returns the Bundle.
    pub async fn search(&self, path: &str) -> Value {
        let r = self.get(path).await;
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["type"], "searchset", "{body}");
        body
    }

    /// `Type/id` of the matches of a search, in order.
    pub async fn search_ids(&self, path: &str) -> Vec<String> {
        match_ids(&self.search(path).await)
    }
}

pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts an OperationOutcome body and returns it.
pub async fn outcome(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let ct = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/fhir+json"), "content type {ct}");
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    body
}

pub fn patient(nhs_number: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}],
        "name": [{"family": "Smith", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1970-01-02"
    })
}
