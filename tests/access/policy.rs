//! Policy files: reload without restart; a broken file is refused and the old policy stays.

use crate::common::TestApp;
use crate::*;

fn copy_policies(to: &std::path::Path) {
    for f in [
        "model.conf",
        "policy.csv",
        "sensitivity.toml",
        "access.toml",
    ] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("consent-policies")
                .join(f),
            to.join(f),
        )
        .unwrap();
    }
}

async fn reload(app: &TestApp, token: &str) -> (u16, serde_json::Value) {
    let r = app
        .client
        .post(format!("{}/admin/policy/reload", app.origin))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_broken_policy_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    let policy_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(|s| s.access.policy_dir = Some(policy_dir)).await;
    let p = create_as(&app, "RX1", patient("Reload", None)).await;
    let obs = create_as(&app, "RX1", observation(p["id"].as_str().unwrap(), &[])).await;
    let path = format!("Observation/{}", obs["id"].as_str().unwrap());
    let doctor = app.user_token("u-d", "Dee Doctor", "S8000:G8000:R8000", "RX1", &["B0360"]);
    let admin = app.user_token("u-a", "Ada Admin", "S8000:G8000:R8015", "RX1", &["B0062"]);
    assert_eq!(get(&app, &doctor, &path).await.0, 200);

    // Only policy administrators reload.
    assert_eq!(reload(&app, &doctor).await.0, 403);
    assert_eq!(reload(&app, &admin).await.0, 200);

    // A typo in a resource type: refused with the file and line, and nothing changes.
    let csv = dir.path().join("policy.csv");
    let good = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &csv,
        format!("{good}\np, clinician, Observaton, read, deny\n"),
    )
    .unwrap();
    let (status, body) = reload(&app, &admin).await;
    assert_eq!(status, 422, "{body}");
    let message = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        message.contains("policy.csv") && message.contains("Observaton"),
        "{body}"
    );
    assert_eq!(
        get(&app, &doctor, &path).await.0,
        200,
        "the old policy stays"
    );

    // A broken sensitivity mapping is refused too.
    std::fs::write(&csv, &good).unwrap();
    let sens = dir.path().join("sensitivity.toml");
    let good_sens = std::fs::read_to_string(&sens).unwrap();
    std::fs::write(&sens, "this is not toml [").unwrap();
    assert_eq!(reload(&app, &admin).await.0, 422);
    std::fs::write(&sens, good_sens).unwrap();

    // A valid change takes effect without a restart.
    std::fs::write(
        &csv,
        format!("{good}\np, clinician, Observation, read, deny\n"),
    )
    .unwrap();
    assert_eq!(reload(&app, &admin).await.0, 200);
    assert_eq!(get(&app, &doctor, &path).await.0, 403);
}

#[tokio::test]
async fn the_server_refuses_to_start_with_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("access.toml"),
        "relationship_window_days = 0\n",
    )
    .unwrap();
    let db = crate::common::TestDatabase::create().await;
    let key_dir = tempfile::tempdir().unwrap();
    let mut settings = crate::common::test_settings(&db.url, key_dir.path());
    settings.access.policy_dir = Some(dir.path().to_path_buf());
    let error = shcr::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(format!("{error:#}").contains("access.toml"), "{error:#}");
}
