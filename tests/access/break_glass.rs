//! Break-glass: a coded, explained, time-limited opening of one person's record, flagged in the
//! audit and listed for IG review.

use reqwest::header::AUTHORIZATION;
use serde_json::json;

use crate::common::TestApp;
use crate::*;

async fn read_with(app: &TestApp, token: &str, path: &str, glass: Option<(&str, &str)>) -> u16 {
    let mut r = app
        .client
        .get(app.url(path))
        .header(AUTHORIZATION, format!("Bearer {token}"));
    if let Some((code, reason)) = glass {
        r = r
            .header("x-break-glass", code)
            .header("x-break-glass-reason", reason);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn break_glass_opens_one_record_for_a_while_and_is_reviewed() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Stranger", None)).await;
    let pid = p["id"].as_str().unwrap();
    let other = create_as(&app, "RX1", patient("Other", None)).await;
    let other_id = other["id"].as_str().unwrap();
    let obs = create_as(&app, "RX1", observation(pid, &[])).await;
    let obs_path = format!("Observation/{}", obs["id"].as_str().unwrap());
    let doctor = app.user_token(
        "u-ed",
        "Emma Doctor",
        "S8000:G8000:R8000",
        "RX2",
        &["B0360"],
    );

    assert_eq!(
        read_with(&app, &doctor, &obs_path, None).await,
        404,
        "no relationship"
    );
    // A reason that explains nothing is refused.
    assert_eq!(
        read_with(&app, &doctor, &obs_path, Some(("ETREAT", "x"))).await,
        400
    );
    assert_eq!(
        read_with(
            &app,
            &doctor,
            &obs_path,
            Some(("MAYBE", "unconscious in ED, no history available"))
        )
        .await,
        400
    );
    assert_eq!(
        read_with(
            &app,
            &doctor,
            &obs_path,
            Some(("ETREAT", "unconscious in ED, no history available"))
        )
        .await,
        200
    );
    // The grant holds for later requests about that person, and only that person.
    assert_eq!(
        read_with(&app, &doctor, &format!("Patient/{pid}"), None).await,
        200
    );
    let (status, bundle) = get(&app, &doctor, &format!("Patient/{pid}/Observation")).await;
    assert_eq!((status, bundle["total"].as_i64()), (200, Some(1)));
    assert_eq!(
        read_with(&app, &doctor, &format!("Patient/{other_id}"), None).await,
        404
    );

    // Every access under the grant is flagged in the audit.
    let flagged: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT purpose, break_glass_id FROM audit_event WHERE caller_id = 'u-ed' AND http_status = 200 ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(flagged.len(), 3);
    assert_eq!(flagged[0].0, "ETREAT");
    assert!(
        flagged
            .iter()
            .all(|(p, g)| g.is_some() && (p == "ETREAT" || p == "BTG")),
        "{flagged:?}"
    );

    // Students may not break the glass.
    let student = app.user_token(
        "u-st",
        "Sam Student",
        "S8000:G8000:R8004",
        "RX2",
        &["B0360"],
    );
    assert_eq!(
        read_with(
            &app,
            &student,
            &format!("Patient/{other_id}"),
            Some(("BTG", "I want to see this record please"))
        )
        .await,
        403
    );

    // The privacy officer sees the grant awaiting review, with its accesses, and reviews it.
    let officer = app.user_token(
        "u-po",
        "Pat Officer",
        "S8002:G8003:R0001",
        "RX2",
        &["B0015"],
    );
    let (status, list) = {
        let r = app
            .client
            .get(format!("{}/ig/break-glass?pending=true", app.origin))
            .bearer_auth(&officer)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "{list}");
    let grants = list["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{list}");
    assert_eq!(grants[0]["patient"], format!("Patient/{pid}"));
    assert_eq!(
        grants[0]["reasonText"],
        "unconscious in ED, no history available"
    );
    assert_eq!(grants[0]["accesses"], 3);
    let id = grants[0]["id"].as_str().unwrap();
    let r = app
        .client
        .post(format!("{}/ig/break-glass/{id}/review", app.origin))
        .bearer_auth(&officer)
        .json(&json!({"outcome": "justified", "note": "ED attendance confirmed on PAS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/ig/break-glass?pending=true", app.origin))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert!(list["grants"].as_array().unwrap().is_empty());
    // Clinicians cannot see the review list.
    let r = app
        .client
        .get(format!("{}/ig/break-glass", app.origin))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn break_glass_does_not_lift_an_opt_out() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Objector", None)).await;
    let pid = p["id"].as_str().unwrap();
    create_as(&app, "RX1", consent(pid, &[], &[], None)).await;
    let doctor = app.user_token(
        "u-ed",
        "Emma Doctor",
        "S8000:G8000:R8000",
        "RX2",
        &["B0360"],
    );
    assert_eq!(
        read_with(
            &app,
            &doctor,
            &format!("Patient/{pid}"),
            Some(("BTG", "unconscious in ED, no history available"))
        )
        .await,
        404
    );
    // Consent changes take effect on the next request: withdrawing the objection opens it.
    let (status, consents) = get(
        &app,
        &app.trust_token("RX1"),
        &format!("Consent?patient={pid}"),
    )
    .await;
    assert_eq!(status, 200);
    let mut c = consents["entry"][0]["resource"].clone();
    c["status"] = json!("inactive");
    let cid = c["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::PUT,
        &format!("Consent/{cid}"),
        Some(&c),
        "withdraw",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        read_with(&app, &doctor, &format!("Patient/{pid}"), None).await,
        200,
        "the grant is still open"
    );
}
