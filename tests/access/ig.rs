//! The IG officer's view: AuditEvent search, CSV export and reports; nobody else's.

use crate::common::TestApp;
use crate::*;

#[tokio::test]
async fn privacy_officers_search_the_audit_and_clinicians_cannot() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Doctor", None)).await;
    let pid = p["id"].as_str().unwrap();
    // A doctor called Doctor looks at a patient called Doctor, out of a relationship-free org.
    let doctor = app.user_token(
        "u-dd",
        "Dana Doctor",
        "S8000:G8000:R8000",
        "RX1",
        &["B0360"],
    );
    assert_eq!(get(&app, &doctor, &format!("Patient/{pid}")).await.0, 200);
    let stranger = app.user_token(
        "u-xx",
        "Xan Stranger",
        "S8000:G8000:R8000",
        "RX9",
        &["B0360"],
    );
    assert_eq!(get(&app, &stranger, &format!("Patient/{pid}")).await.0, 404);

    let officer = app.user_token("u-po", "Pat Officer", "S8002:G8003:R0001", "RX1", &[]);
    assert_eq!(
        get(&app, &officer, &format!("Patient/{pid}")).await.0,
        403,
        "no clinical data"
    );
    let (status, bundle) = get(&app, &officer, &format!("AuditEvent?patient={pid}")).await;
    assert_eq!(status, 200, "{bundle}");
    let events = bundle["entry"].as_array().unwrap();
    assert!(events.len() >= 2, "{bundle}");
    let denial = events
        .iter()
        .map(|e| &e["resource"])
        .find(|e| e["outcome"] == "4")
        .expect("the denial is audited");
    assert!(
        denial["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("no legitimate relationship")
    );
    let (_, bundle) = get(
        &app,
        &officer,
        "AuditEvent?agent=u-dd&outcome=0&purpose=TREAT",
    )
    .await;
    assert_eq!(bundle["total"], 1, "{bundle}");

    let r = app
        .client
        .get(format!("{}/ig/audit.csv?patient={pid}", app.origin))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    assert!(csv.starts_with("seq,recorded,"), "{csv}");
    assert!(csv.lines().count() >= 3, "{csv}");

    let r = app
        .client
        .get(format!("{}/ig/reports/same-surname", app.origin))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["rows"][0]["user"], "u-dd", "{report}");
    for name in ["out-of-hours", "unusual-volume", "no-relationship"] {
        let r = app
            .client
            .get(format!("{}/ig/reports/{name}", app.origin))
            .bearer_auth(&officer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }

    assert_eq!(get(&app, &doctor, "AuditEvent").await.0, 403);
    let r = app
        .client
        .get(format!("{}/ig/audit.csv", app.origin))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
