//! Writes: roles need `write`; a trust's system changes only what its own organisation wrote,
//! whichever door it uses.

use serde_json::json;

use crate::common::TestApp;
use crate::*;

#[tokio::test]
async fn a_trust_cannot_change_another_trusts_resource_by_any_door() {
    let app = TestApp::spawn().await;
    let mut p = patient("Owned", None);
    p["identifier"] = json!([{"system": "https://rx1.example/mrn", "value": "M1"}]);
    let p = create_as(&app, "RX1", p).await;
    let id = p["id"].as_str().unwrap();
    let rx2 = app.trust_token("RX2");
    let before = app.write_footprint().await;
    let mut changed = p.clone();
    changed["gender"] = json!("male");
    let (status, _) = send(
        &app,
        &rx2,
        reqwest::Method::PUT,
        &format!("Patient/{id}"),
        Some(&changed),
        "w1",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &app,
        &rx2,
        reqwest::Method::PUT,
        "Patient?identifier=https://rx1.example/mrn|M1",
        Some(&changed),
        "w2",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &app,
        &rx2,
        reqwest::Method::DELETE,
        &format!("Patient/{id}"),
        None,
        "w3",
    )
    .await;
    assert_eq!(status, 403);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Patient/{id}")}}
    ]});
    let (status, _) = send(&app, &rx2, reqwest::Method::POST, "", Some(&bundle), "w4").await;
    assert_eq!(status, 403);
    assert_eq!(app.write_footprint().await, before, "nothing written");
    // The owner still can.
    let (status, _) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::PUT,
        &format!("Patient/{id}"),
        Some(&changed),
        "w5",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn roles_without_write_cannot_write() {
    let app = TestApp::spawn().await;
    let student = app.user_token(
        "u-s",
        "Sam Student",
        "S8000:G8000:R8004",
        "RX1",
        &["B0360", "B0380"],
    );
    let officer = app.user_token("u-o", "Pat Officer", "S8002:G8003:R0001", "RX1", &["B0380"]);
    for token in [student, officer] {
        let (status, body) = send(
            &app,
            &token,
            reqwest::Method::POST,
            "Patient",
            Some(&patient("Nope", None)),
            "w",
        )
        .await;
        assert_eq!(status, 403, "{body}");
    }
    let doctor = app.user_token(
        "u-d",
        "Dee Doctor",
        "S8000:G8000:R8000",
        "RX1",
        &["B0360", "B0380"],
    );
    let (status, _) = send(
        &app,
        &doctor,
        reqwest::Method::POST,
        "Patient",
        Some(&patient("Yes", None)),
        "w",
    )
    .await;
    assert_eq!(status, 201);
}
