//! Sensitivity labels at ingest, through every door.

use serde_json::{Value, json};
use shcr::interactions::{EntryAction, EntryRequest, Repository};
use shcr::store::{Author, Store};

use crate::common::TestApp;
use crate::*;

fn codes(resource: &Value) -> Vec<String> {
    resource["meta"]["security"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["code"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn sensitive_codes_are_labelled_whichever_door_they_use() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Labelled", None)).await;
    let pid = p["id"].as_str().unwrap();

    // REST create.
    let c = create_as(&app, "RX1", condition_snomed(pid, "86406008")).await;
    assert_eq!(codes(&c), vec!["HIV", "R"]);

    // Transaction Bundle.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": condition_icd10(pid, "F10.2"), "request": {"method": "POST", "url": "Condition"}}
    ]});
    let (status, response) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::POST,
        "",
        Some(&bundle),
        "tx",
    )
    .await;
    assert_eq!(status, 200, "{response}");
    let location = response["entry"][0]["response"]["location"]
        .as_str()
        .unwrap();
    let id = location.split('/').nth(1).unwrap();
    let (_, stored) = get(&app, &app.trust_token("RX1"), &format!("Condition/{id}")).await;
    assert_eq!(codes(&stored), vec!["ETH", "R"]);

    // Import (no server: the built-in mapping).
    let repo = Repository::new(Store::from_pool(app.pool.clone()));
    let author = Author {
        kind: "system",
        id: "import".into(),
        org: Some("RX1".into()),
        request_id: None,
    };
    let entry = EntryRequest {
        resource_type: "Condition".into(),
        full_url: None,
        action: EntryAction::Create {
            resource: condition_icd10(pid, "A54.1"),
            if_none_exist: None,
        },
    };
    let out = repo
        .execute_atomic(std::slice::from_ref(&entry), &author)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(out[0].content.as_deref().unwrap()).unwrap();
    assert_eq!(codes(&stored), vec!["STD", "R"]);

    // A trust's own labels stay, and a stronger confidentiality is not lowered.
    let mut o = condition_snomed(pid, "35489007");
    o["meta"] = json!({"security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"},
        {"system": "https://trust.example/labels", "code": "LOCAL"}
    ]});
    let stored = create_as(&app, "RX1", o).await;
    assert_eq!(codes(&stored), vec!["V", "LOCAL", "PSY"]);

    // Ordinary codes get nothing.
    let stored = create_as(&app, "RX1", condition_snomed(pid, "38341003")).await;
    assert!(codes(&stored).is_empty());
}
