//! A clinician's read decides on the patient compartment kept with the stored version
//! (`resource_version.compartment`), without parsing the resource; versions without it are
//! decided from their content exactly as before. Only references on this server's base count:
//! an opted-out patient named by another server's URL does not hide the resource.

use serde_json::json;

use crate::common::TestApp;
use crate::*;

#[tokio::test]
async fn reads_decide_on_the_stored_compartment_as_on_the_content() {
    let app = TestApp::spawn().await;
    let related = create_as(&app, "RX1", patient("Related", None)).await;
    let other = create_as(&app, "RX1", patient("Other", None)).await;
    let (a, b) = (
        related["id"].as_str().unwrap(),
        other["id"].as_str().unwrap(),
    );
    create_as(&app, "RX2", encounter(a, &days_ago(3), &days_ago(2))).await;
    // The other patient has opted out: a resource in their compartment is hidden from RX2 even
    // though it is also in the related patient's.
    create_as(&app, "RX1", consent(b, &[], &[], None)).await;
    // The opted-out patient, named as another server's patient: not in the compartment here.
    let mut foreign = observation(a, &[]);
    foreign["performer"] =
        json!([{"reference": format!("https://elsewhere.example/fhir/Patient/{b}")}]);
    // The same patient on this server (absolute URL): in the compartment, so hidden.
    let mut ours = observation(a, &[]);
    ours["performer"] = json!([{"reference": format!("{}/Patient/{b}", app.base)}]);
    let foreign = create_as(&app, "RX1", foreign).await;
    let ours = create_as(&app, "RX1", ours).await;
    let plain = create_as(&app, "RX1", observation(a, &[])).await;
    let ids: Vec<&str> = [&foreign, &ours, &plain]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let stored: Vec<(Option<Vec<String>>, Option<i64>)> = sqlx::query_as(
        "SELECT compartment, compartment_key FROM resource_version
         WHERE resource_type = 'Observation' AND id = ANY($1) ORDER BY array_position($1, id)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|(c, k)| c.is_some() && k.is_some()),
        "{stored:?}"
    );
    // Pairs (patient id, absolute URL or ""), in the order of the compartment parameters.
    let abs = format!("{}/Patient/{b}", app.base);
    let mut pairs: Vec<(String, String)> = stored[1]
        .0
        .as_deref()
        .unwrap()
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    pairs.sort();
    let mut want = vec![(a.to_string(), String::new()), (b.to_string(), abs)];
    want.sort();
    assert_eq!(pairs, want);

    let doctor = clinician(&app, "RX2");
    let expect = [200, 404, 200];
    for (id, want) in ids.iter().zip(expect) {
        let (status, body) = get(&app, &doctor, &format!("Observation/{id}")).await;
        assert_eq!(status, want, "{id}: {body}");
    }
    // Versions written before the column (or by a tool): decided from the content, the same.
    sqlx::query(
        "UPDATE resource_version SET compartment = NULL, compartment_key = NULL
         WHERE resource_type = 'Observation' AND id = ANY($1)",
    )
    .bind(&ids)
    .execute(&app.pool)
    .await
    .unwrap();
    for (id, want) in ids.iter().zip(expect) {
        let (status, body) = get(&app, &doctor, &format!("Observation/{id}")).await;
        assert_eq!(status, want, "{id} without a stored compartment: {body}");
    }
    // A key from other search parameters is not trusted either.
    sqlx::query(
        "UPDATE resource_version SET compartment = ARRAY[$2, ''], compartment_key = 1
         WHERE resource_type = 'Observation' AND id = ANY($1)",
    )
    .bind(&ids)
    .bind(a)
    .execute(&app.pool)
    .await
    .unwrap();
    for (id, want) in ids.iter().zip(expect) {
        let (status, body) = get(&app, &doctor, &format!("Observation/{id}")).await;
        assert_eq!(status, want, "{id} under another key: {body}");
    }
}
