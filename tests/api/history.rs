use serde_json::{Value, json};

use crate::common::{TestApp, outcome, patient};

fn links(bundle: &Value) -> Vec<(String, String)> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["relation"].as_str().unwrap().to_string(),
                l["url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    links(bundle)
        .into_iter()
        .find(|(r, _)| r == "next")
        .map(|(_, u)| u)
}

async fn get_abs(app: &TestApp, url: &str) -> Value {
    let path = url.strip_prefix(&app.base).unwrap();
    let r = app.get(path).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn instance_history_lists_every_version_newest_first() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let mut p = created.clone();
    p["gender"] = json!("male");
    app.put(&format!("Patient/{id}"), &p).await;
    app.delete(&format!("Patient/{id}")).await;

    let bundle = get_abs(&app, &app.url(&format!("Patient/{id}/_history"))).await;
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 3);
    let entries = bundle["entry"].as_array().unwrap();
    let methods: Vec<&str> = entries
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["gender"], "male");
    assert_eq!(entries[2]["response"]["etag"], "W/\"1\"");
    assert_eq!(entries[2]["request"]["url"], "Patient");
    assert_eq!(entries[1]["request"]["url"], format!("Patient/{id}"));

    outcome(app.get("Patient/never/_history").await, 404).await;
}

#[tokio::test]
async fn type_and_system_history_page_with_stable_links() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.create(&patient("9434765919")).await;
    }
    app.create(&json!({"resourceType": "Organization", "name": "Northshire NHS Trust"}))
        .await;

    let first = get_abs(&app, &app.url("Patient/_history?_count=2")).await;
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    let mut seen: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    let mut next = next_link(&first);
    // A write between pages must not shift the pages already handed out.
    app.create(&patient("9434765919")).await;
    while let Some(url) = next {
        let page = get_abs(&app, &url).await;
        seen.extend(
            page["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string()),
        );
        next = next_link(&page);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(unique.len(), 5);

    let system = get_abs(&app, &app.url("_history")).await;
    let types: Vec<&str> = system["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        // Each write's Provenance and each Patient's Person are history too.
        .filter(|t| !matches!(*t, "Provenance" | "Person"))
        .collect();
    assert_eq!(types.len(), 7);
    assert!(types.contains(&"Organization"));
}

#[tokio::test]
async fn since_filters_history() {
    let app = TestApp::spawn().await;
    let old = app.create(&patient("9434765919")).await;
    let since = old["meta"]["lastUpdated"].as_str().unwrap().to_string();
    // Poll until the clock has moved past the first write's millisecond.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let newer = loop {
        let p = app.create(&patient("9434765919")).await;
        if p["meta"]["lastUpdated"].as_str().unwrap() > since.as_str() {
            break p;
        }
        assert!(std::time::Instant::now() < deadline);
    };
    let cut = newer["meta"]["lastUpdated"].as_str().unwrap();
    let bundle = get_abs(
        &app,
        &format!("{}?_since={}", app.url("Patient/_history"), urlencode(cut)),
    )
    .await;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&newer["id"].as_str().unwrap()));
    assert!(!ids.contains(&old["id"].as_str().unwrap()));
    outcome(app.get("Patient/_history?_since=yesterday").await, 400).await;
    outcome(app.get("Patient/_history?_count=0").await, 400).await;
    outcome(app.get("Patient/_history?colour=blue").await, 400).await;
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}
