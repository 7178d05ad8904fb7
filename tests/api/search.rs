//! FHIR search against the real server, index and database: each parameter type and modifier,
//! result parameters, paging, includes, errors and consistency.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestApp, match_ids, outcome};

fn key(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A small clinical world: two patients, a practitioner, observations and a condition.
struct World {
    zoe: Value,
    bob: Value,
    gp: Value,
    heart_rate: Value,
    bp: Value,
    weight: Value,
    condition: Value,
}

async fn world(app: &TestApp) -> World {
    let gp = app
        .create(&json!({
            "resourceType": "Practitioner",
            "identifier": [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "1234567"}],
            "name": [{"family": "Gose", "given": ["Sandra"]}],
            "active": true
        }))
        .await;
    let zoe = app
        .create(&json!({
            "resourceType": "Patient",
            "meta": {"tag": [{"system": "https://example.org/tags", "code": "vip"}],
                     "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"],
                     "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Zoë Brontë, lives near the lighthouse</div>"},
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                 "system": "https://rx1.example.nhs.uk/mrn", "value": "M-1"}
            ],
            "active": true,
            "name": [{"family": "Brontë", "given": ["Zoë", "Anne"]}],
            "gender": "female",
            "birthDate": "1980-05-17",
            "address": [{"line": ["1 Lighthouse Lane"], "city": "Whitby", "postalCode": "YO21 3AA"}],
            "generalPractitioner": [{"reference": format!("Practitioner/{}", gp["id"].as_str().unwrap())}]
        }))
        .await;
    let bob = app
        .create(&json!({
            "resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
            "active": false,
            "name": [{"family": "Smith", "given": ["Robert"]}],
            "gender": "male",
            "birthDate": "1975"
        }))
        .await;
    let subject = |p: &Value| json!({"reference": key(p)});
    let heart_rate = app
        .create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
            "subject": subject(&zoe),
            "performer": [{"reference": key(&gp)}],
            "effectiveDateTime": "2024-03-10T09:30:00Z",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
        }))
        .await;
    let bp = app
        .create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
            "subject": subject(&zoe),
            "effectivePeriod": {"start": "2024-06-01T08:00:00Z", "end": "2024-06-02T08:00:00Z"},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        }))
        .await;
    let weight = app
        .create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": subject(&bob),
            "effectiveDateTime": "2023-11-02",
            "valueQuantity": {"value": 81.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        }))
        .await;
    let condition = app
        .create(&json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertensive disorder"}]},
            "subject": subject(&zoe),
            "onsetDateTime": "2019"
        }))
        .await;
    World {
        zoe,
        bob,
        gp,
        heart_rate,
        bp,
        weight,
        condition,
    }
}

#[tokio::test]
async fn string_parameters_start_with_ignore_case_and_accents() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        app.search_ids("Patient?family=bron").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?family=BRONTE").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(app.search_ids("Patient?given=zoe").await, vec![key(&w.zoe)]);
    assert_eq!(app.search_ids("Patient?name=anne").await, vec![key(&w.zoe)]);
    assert!(app.search_ids("Patient?family=ront").await.is_empty());
    assert_eq!(
        app.search_ids("Patient?family:contains=ront").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?family:exact=Brontë").await,
        vec![key(&w.zoe)]
    );
    assert!(
        app.search_ids("Patient?family:exact=Bronte")
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Patient?address-city=whit").await,
        vec![key(&w.zoe)]
    );
    // Repeated parameters AND, commas OR.
    assert_eq!(
        sorted(app.search_ids("Patient?family=smith,bronte").await),
        sorted(vec![key(&w.zoe), key(&w.bob)])
    );
    assert!(
        app.search_ids("Patient?family=smith&given=zoe")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn token_parameters_and_modifiers() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let nhs = "https://fhir.nhs.uk/Id/nhs-number";
    assert_eq!(
        app.search_ids(&format!("Patient?identifier={nhs}|9434765919"))
            .await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?identifier=9434765919").await,
        vec![key(&w.zoe)]
    );
    assert!(
        app.search_ids("Patient?identifier=|9434765919")
            .await
            .is_empty()
    );
    assert_eq!(
        sorted(app.search_ids(&format!("Patient?identifier={nhs}|")).await),
        sorted(vec![key(&w.zoe), key(&w.bob)])
    );
    assert_eq!(
        app.search_ids("Patient?gender=female").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?gender:not=female").await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        app.search_ids("Patient?active=false").await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        app.search_ids("Observation?code=http://loinc.org|8867-4")
            .await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids("Observation?code:text=heart").await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids(
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M-1"
        )
        .await,
        vec![key(&w.zoe)]
    );
    let body = outcome(
        app.get("Observation?code:in=http://example.org/vs").await,
        400,
    )
    .await;
    assert_eq!(body["issue"][0]["code"], "not-supported");
}

#[tokio::test]
async fn reference_parameters_chains_and_reverse_chains() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let zoe_id = w.zoe["id"].as_str().unwrap();
    let zoe_obs = sorted(vec![key(&w.heart_rate), key(&w.bp)]);
    assert_eq!(
        sorted(
            app.search_ids(&format!("Observation?subject=Patient/{zoe_id}"))
                .await
        ),
        zoe_obs
    );
    assert_eq!(
        sorted(
            app.search_ids(&format!("Observation?subject={zoe_id}"))
                .await
        ),
        zoe_obs
    );
    assert_eq!(
        sorted(
            app.search_ids(&format!("Observation?subject:Patient={zoe_id}"))
                .await
        ),
        zoe_obs
    );
    assert_eq!(
        sorted(
            app.search_ids(&format!(
                "Observation?patient={}/Patient/{zoe_id}",
                app.base
            ))
            .await
        ),
        zoe_obs
    );
    assert_eq!(
        sorted(
            app.search_ids("Observation?subject:Patient.family=bront")
                .await
        ),
        zoe_obs
    );
    assert_eq!(
        sorted(
            app.search_ids("Observation?subject:Patient.identifier=9434765919")
                .await
        ),
        zoe_obs
    );
    assert_eq!(
        app.search_ids("Patient?_has:Observation:subject:code=http://loinc.org|29463-7")
            .await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        app.search_ids(&format!(
            "Patient?general-practitioner=Practitioner/{}",
            w.gp["id"].as_str().unwrap()
        ))
        .await,
        vec![key(&w.zoe)]
    );
    // A bare id stands for every type the parameter may refer to: any type for a Provenance
    // target (more types than a union of term queries takes).
    let provenance = app.search(&format!("Provenance?target={zoe_id}")).await;
    assert_eq!(match_ids(&provenance).len(), 1, "{provenance}");
    assert_eq!(
        provenance["entry"][0]["resource"]["target"][0]["reference"],
        format!("Patient/{zoe_id}/_history/1")
    );
    assert!(
        app.search_ids(&format!("Observation?subject:Device={zoe_id}"))
            .await
            .is_empty()
    );
    // `subject` may name a Patient or a Location, and both have `name`: the type must be given.
    let body = outcome(app.get("Observation?subject.name=x").await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("subject"),
        "{body}"
    );
}

#[tokio::test]
async fn date_parameters_with_prefixes_and_precision() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        app.search_ids("Patient?birthdate=1980").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?birthdate=1980-05").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?birthdate=1980-05-17").await,
        vec![key(&w.zoe)]
    );
    assert!(
        app.search_ids("Patient?birthdate=1980-05-18")
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Patient?birthdate=lt1979").await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        app.search_ids("Patient?birthdate=gt1976").await,
        vec![key(&w.zoe)]
    );
    // Bob's birth year 1975 is not contained in 1975-06: eq fails, ne and ap hold.
    assert!(app.search_ids("Patient?birthdate=1975-06").await.is_empty());
    assert_eq!(
        app.search_ids("Patient?birthdate=ne1980").await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        sorted(
            app.search_ids("Patient?birthdate=ge1975&birthdate=le1980")
                .await
        ),
        sorted(vec![key(&w.zoe), key(&w.bob)])
    );
    assert_eq!(
        app.search_ids("Observation?date=2024-03-10").await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids("Observation?date=sa2024-03-10").await,
        vec![key(&w.bp)]
    );
    assert_eq!(
        app.search_ids("Observation?date=eb2024").await,
        vec![key(&w.weight)]
    );
    // The period 2024-06-01T08:00 – 2024-06-02T08:00 lies in June but not in 1 June.
    assert_eq!(
        app.search_ids("Observation?date=2024-06").await,
        vec![key(&w.bp)]
    );
    assert!(
        app.search_ids("Observation?date=2024-06-01")
            .await
            .is_empty()
    );
    // `ap` reaches 10% of the distance to now either side (about three months here).
    let near = app.search_ids("Observation?date=ap2024-06-01").await;
    assert!(
        near.contains(&key(&w.bp)) && near.contains(&key(&w.heart_rate)),
        "{near:?}"
    );
    assert!(!near.contains(&key(&w.weight)));
    outcome(app.get("Patient?birthdate=yesterday").await, 400).await;
}

#[tokio::test]
async fn quantity_number_composite_uri_and_missing() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        app.search_ids("Observation?value-quantity=72").await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids("Observation?value-quantity=gt80").await,
        vec![key(&w.weight)]
    );
    assert_eq!(
        app.search_ids("Observation?value-quantity=81.5|http://unitsofmeasure.org|kg")
            .await,
        vec![key(&w.weight)]
    );
    assert!(
        app.search_ids("Observation?value-quantity=81.5|http://unitsofmeasure.org|g")
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Observation?value-quantity=le72||/min")
            .await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt110")
            .await,
        vec![key(&w.bp)]
    );
    // The pair must come from one component: systolic 120 and diastolic code do not combine.
    assert!(
        app.search_ids("Observation?component-code-value-quantity=http://loinc.org|8462-4$gt110")
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Observation?code-value-quantity=http://loinc.org|8867-4$72")
            .await,
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids(
            "Patient?_profile=https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"
        )
        .await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?_profile:below=https://fhir.hl7.org.uk/StructureDefinition")
            .await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?birthdate:missing=true").await,
        Vec::<String>::new()
    );
    assert_eq!(
        app.search_ids("Patient?address:missing=true").await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        sorted(
            app.search_ids("Observation?value-quantity:missing=false")
                .await
        ),
        sorted(vec![key(&w.heart_rate), key(&w.weight)])
    );
}

#[tokio::test]
async fn common_parameters_and_full_text() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let zoe_id = w.zoe["id"].as_str().unwrap();
    assert_eq!(
        app.search_ids(&format!("Patient?_id={zoe_id}")).await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?_tag=https://example.org/tags|vip")
            .await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?_security=R").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?_text=lighthouse").await,
        vec![key(&w.zoe)]
    );
    assert_eq!(
        app.search_ids("Patient?_text=bronte lighthouse").await,
        vec![key(&w.zoe)]
    );
    assert!(app.search_ids("Patient?_text=harbour").await.is_empty());
    assert_eq!(
        app.search_ids("Patient?_content=whitby").await,
        vec![key(&w.zoe)]
    );
    let since = w.zoe["meta"]["lastUpdated"].as_str().unwrap();
    let found = app
        .search_ids(&format!(
            "Patient?_lastUpdated=ge{}",
            since.replace(':', "%3A")
        ))
        .await;
    assert!(found.contains(&key(&w.zoe)), "{found:?}");
    assert!(
        app.search_ids("Patient?_lastUpdated=lt2000-01-01")
            .await
            .is_empty()
    );
}

/// `_id` is answered from each document's `Type/id` key, not from token terms of its own: with
/// several values, negated, without a system, through a chain and a reverse chain, at system
/// level over several types.
#[tokio::test]
async fn id_searches_use_the_resource_key() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();
    let (zoe, bob) = (id(&w.zoe), id(&w.bob));
    assert_eq!(
        sorted(app.search_ids(&format!("Patient?_id={zoe},{bob}")).await),
        sorted(vec![key(&w.zoe), key(&w.bob)])
    );
    assert!(
        app.search_ids(&format!("Patient?_id={zoe}&_id={bob}"))
            .await
            .is_empty(),
        "repeated parameters AND together"
    );
    assert_eq!(
        app.search_ids(&format!("Patient?_id:not={zoe}")).await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        app.search_ids(&format!("Patient?_id=%7C{zoe}")).await,
        vec![key(&w.zoe)],
        "an id has no system"
    );
    assert!(
        app.search_ids(&format!("Patient?_id=https://example.org%7C{zoe}"))
            .await
            .is_empty()
    );
    assert!(
        app.search_ids(&format!("Observation?_id={zoe}"))
            .await
            .is_empty(),
        "another type's id"
    );
    assert_eq!(
        sorted(
            app.search_ids(&format!("Observation?subject:Patient._id={zoe}"))
                .await
        ),
        sorted(vec![key(&w.heart_rate), key(&w.bp)])
    );
    assert_eq!(
        app.search_ids(&format!(
            "Patient?_has:Observation:subject:_id={}",
            id(&w.weight)
        ))
        .await,
        vec![key(&w.bob)]
    );
    assert_eq!(
        sorted(
            app.search_ids(&format!(
                "?_type=Patient,Observation&_id={zoe},{}",
                id(&w.weight)
            ))
            .await
        ),
        sorted(vec![key(&w.zoe), key(&w.weight)])
    );
    assert!(app.search_ids("Patient?_id:missing=true").await.is_empty());
    assert_eq!(
        sorted(app.search_ids("Patient?_id:missing=false").await),
        sorted(vec![key(&w.zoe), key(&w.bob)])
    );
}

/// `_content` finds the words people write, not the ids and identifier values a resource
/// carries: those are searched with `_id`, the reference parameters and `identifier`.
#[tokio::test]
async fn content_holds_text_not_references_or_identifiers() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        sorted(app.search_ids("Observation?_content=heart").await),
        vec![key(&w.heart_rate)]
    );
    assert_eq!(
        app.search_ids("Patient?_content=lighthouse lane").await,
        vec![key(&w.zoe)]
    );
    let zoe = w.zoe["id"].as_str().unwrap();
    assert!(
        app.search_ids(&format!("Observation?_content={zoe}"))
            .await
            .is_empty(),
        "a reference's id is not text"
    );
    assert!(
        app.search_ids("Observation?_content=patient")
            .await
            .is_empty(),
        "nor is its type"
    );
    assert!(
        app.search_ids("Patient?_content=9434765919")
            .await
            .is_empty(),
        "an identifier's value is searched with identifier"
    );
    assert_eq!(
        app.search_ids("Patient?identifier=9434765919").await,
        vec![key(&w.zoe)]
    );
}

#[tokio::test]
async fn includes_and_reverse_includes() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let bundle = app
        .search(&format!(
            "Observation?_id={}&_include=Observation:subject&_include=Observation:performer",
            w.heart_rate["id"].as_str().unwrap()
        ))
        .await;
    let includes: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| key(&e["resource"]))
        .collect();
    assert_eq!(sorted(includes), sorted(vec![key(&w.zoe), key(&w.gp)]));
    let bundle = app
        .search(&format!(
            "Patient?_id={}&_revinclude=Observation:subject&_revinclude=Condition:subject",
            w.zoe["id"].as_str().unwrap()
        ))
        .await;
    let includes: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| key(&e["resource"]))
        .collect();
    assert_eq!(
        sorted(includes),
        sorted(vec![key(&w.heart_rate), key(&w.bp), key(&w.condition)])
    );
    assert_eq!(match_ids(&bundle), vec![key(&w.zoe)]);
    // :iterate follows the included Observations on to their performers.
    let bundle = app
        .search(&format!(
            "Patient?_id={}&_revinclude=Observation:subject&_include:iterate=Observation:performer",
            w.zoe["id"].as_str().unwrap()
        ))
        .await;
    let includes: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| key(&e["resource"]))
        .collect();
    assert!(includes.contains(&key(&w.gp)), "{includes:?}");
}

#[tokio::test]
async fn sorting_paging_totals_and_summaries() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for (i, family) in [
        "Adams", "Baker", "Clark", "Davis", "Evans", "Frost", "Green",
    ]
    .iter()
    .enumerate()
    {
        created.push(app.create(&json!({
            "resourceType": "Patient", "name": [{"family": family}], "gender": if i % 2 == 0 {"female"} else {"male"},
            "birthDate": format!("19{}0-01-01", 5 + i % 3)
        })).await);
    }
    let by_family = app.search_ids("Patient?_sort=family&_count=100").await;
    let families: Vec<String> = created.iter().map(key).collect();
    assert_eq!(by_family, families);
    let desc = app.search_ids("Patient?_sort=-family").await;
    assert_eq!(desc, families.iter().rev().cloned().collect::<Vec<_>>());
    // Several keys: gender, then birth date descending, then family.
    let multi = app.search("Patient?_sort=gender,-birthdate,family").await;
    let genders: Vec<&str> = multi["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["gender"].as_str().unwrap())
        .collect();
    assert_eq!(
        genders,
        vec![
            "female", "female", "female", "female", "male", "male", "male"
        ]
    );

    // Pages of 3 with a write in between: nothing repeated or skipped among the first seven.
    let first = app.search("Patient?_sort=family&_count=3").await;
    assert_eq!(first["total"], 7);
    let mut seen = match_ids(&first);
    let next = |b: &Value, rel: &str| {
        b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == rel)
            .map(|l| l["url"].as_str().unwrap().to_string())
    };
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Aaron"}]}))
        .await;
    let mut url = next(&first, "next");
    let mut last_page = first.clone();
    while let Some(u) = url {
        let page = app.search(u.strip_prefix(&app.base).unwrap()).await;
        seen.extend(match_ids(&page));
        url = next(&page, "next");
        last_page = page;
    }
    assert_eq!(seen, families);
    // And back again.
    let prev_url = next(&last_page, "previous").expect("previous link");
    let prev = app.search(prev_url.strip_prefix(&app.base).unwrap()).await;
    assert_eq!(match_ids(&prev), families[3..6].to_vec());

    let count = app.search("Patient?_summary=count").await;
    assert_eq!(count["total"], 8);
    assert!(count.get("entry").is_none() || count["entry"].as_array().unwrap().is_empty());
    let none = app.search("Patient?_total=none&_count=1").await;
    assert!(none.get("total").is_none());
    let summary = app.search("Patient?family=adams&_summary=true").await;
    let r = &summary["entry"][0]["resource"];
    assert!(r.get("gender").is_some() && r.get("name").is_some());
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    let elements = app.search("Patient?family=adams&_elements=gender").await;
    let r = &elements["entry"][0]["resource"];
    assert!(r.get("gender").is_some() && r.get("name").is_none() && r.get("birthDate").is_none());
}

#[tokio::test]
async fn post_search_compartments_and_system_search() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let r = app
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=bronte&gender=female")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(match_ids(&body), vec![key(&w.zoe)]);
    let zoe_id = w.zoe["id"].as_str().unwrap();
    assert_eq!(
        sorted(
            app.search_ids(&format!("Patient/{zoe_id}/Observation"))
                .await
        ),
        sorted(vec![key(&w.heart_rate), key(&w.bp)])
    );
    assert_eq!(
        app.search_ids(&format!(
            "Patient/{zoe_id}/Condition?clinical-status=active"
        ))
        .await,
        vec![key(&w.condition)]
    );
    assert_eq!(
        app.search_ids(&format!("Patient/{zoe_id}/Observation?code=8867-4"))
            .await,
        vec![key(&w.heart_rate)]
    );
    let all = app
        .search_ids("?_type=Patient,Practitioner&_sort=_id&_count=10")
        .await;
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn unknown_parameters_are_refused_or_reported_when_lenient() {
    let app = TestApp::spawn().await;
    world(&app).await;
    let body = outcome(app.get("Patient?colour=blue").await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );
    outcome(app.get("Patient?gender:sideways=female").await, 400).await;
    outcome(app.get("Patient?_sort=colour").await, 400).await;
    outcome(app.get("Patient?_count=many").await, 400).await;
    let r = app
        .request(Method::GET, "Patient?colour=blue&gender=female")
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(match_ids(&body).len(), 1);
    let oo = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("outcome entry");
    assert!(
        oo["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let self_link = body["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("colour"), "{self_link}");
}

#[tokio::test]
async fn a_search_sees_every_write_committed_before_it() {
    let app = TestApp::spawn().await;
    for i in 0..20 {
        let p = app
            .create(&json!({"resourceType": "Patient", "name": [{"family": format!("Fresh{i}")}]}))
            .await;
        // No sleeps: the search itself waits for the index to catch up.
        assert_eq!(
            app.search_ids(&format!("Patient?family:exact=Fresh{i}"))
                .await,
            vec![key(&p)]
        );
        app.delete(&format!("Patient/{}", p["id"].as_str().unwrap()))
            .await;
        assert!(
            app.search_ids(&format!("Patient?family:exact=Fresh{i}"))
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn two_servers_on_one_database_see_each_others_writes() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(&a.db.url).await;
    for i in 0..5 {
        let p = a
            .create(&json!({"resourceType": "Patient", "name": [{"family": format!("Shared{i}")}]}))
            .await;
        assert_eq!(
            b.search_ids(&format!("Patient?family=shared{i}")).await,
            vec![key(&p)]
        );
        let q = b
            .create(&json!({"resourceType": "Patient", "name": [{"family": format!("Other{i}")}]}))
            .await;
        assert_eq!(
            a.search_ids(&format!("Patient?family=other{i}")).await,
            vec![key(&q)]
        );
    }
}

#[tokio::test]
async fn metadata_lists_the_search_parameters() {
    let app = TestApp::spawn().await;
    let statement: Value = app
        .client
        .get(app.url("metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let names: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "family",
        "birthdate",
        "identifier",
        "general-practitioner",
        "_id",
        "_lastUpdated",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        patient["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["code"] == "search-type")
    );
}

#[tokio::test]
async fn the_index_survives_restarts_and_rebuilds_when_lost() {
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let first = {
        let d = index_dir.clone();
        TestApp::spawn_with(move |s| s.index_dir = Some(d)).await
    };
    let p = first
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Persistent"}]}))
        .await;
    assert_eq!(
        first.search_ids("Patient?family=persistent").await,
        vec![key(&p)]
    );
    let url = first.db.url.clone();
    let db = first.keep_database().await;
    // A second server process on the same folder resumes from the stored feed position.
    let meta_before = std::fs::read_to_string(index_dir.join("meta.json")).unwrap();
    assert!(
        meta_before.contains("txid"),
        "the feed position is kept in the index: {meta_before}"
    );
    let again = {
        let d = index_dir.clone();
        TestApp::spawn_on_with(&url, move |s| s.index_dir = Some(d)).await
    };
    assert_eq!(
        again.search_ids("Patient?family=persistent").await,
        vec![key(&p)]
    );
    again.stop().await;
    // A corrupt index is thrown away and rebuilt from PostgreSQL.
    std::fs::write(index_dir.join("meta.json"), "not json").unwrap();
    let rebuilt = {
        let d = index_dir.clone();
        TestApp::spawn_on_with(&url, move |s| s.index_dir = Some(d)).await
    };
    assert_eq!(
        rebuilt.search_ids("Patient?family=persistent").await,
        vec![key(&p)]
    );
    rebuilt.stop().await;
    // So is one written with another document layout. Its last commit is made to lack `p` and
    // to name the layout before this one: resumed from its feed position, `p` would stay
    // missing; rebuilt, it is found.
    {
        let (index, fields) = shcr::search::index::open_or_create(&index_dir).unwrap();
        let payload = index.load_metas().unwrap().payload.unwrap();
        let current = format!("\"schema\":{}", shcr::search::index::SCHEMA_VERSION);
        assert!(payload.contains(&current), "{payload}");
        let older = format!("\"schema\":{}", shcr::search::index::SCHEMA_VERSION - 1);
        let mut writer: tantivy::IndexWriter =
            index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.delete_term(tantivy::Term::from_field_text(
            fields.key,
            &shcr::search::terms::local(
                p["resourceType"].as_str().unwrap(),
                p["id"].as_str().unwrap(),
            ),
        ));
        let mut commit = writer.prepare_commit().unwrap();
        commit.set_payload(&payload.replace(&current, &older));
        commit.commit().unwrap();
    }
    let relaid = {
        let d = index_dir.clone();
        TestApp::spawn_on_with(&url, move |s| s.index_dir = Some(d)).await
    };
    assert_eq!(
        relaid.search_ids("Patient?family=persistent").await,
        vec![key(&p)]
    );
    relaid.stop().await;
    // So is a missing one.
    std::fs::remove_dir_all(&index_dir).unwrap();
    let fresh = {
        let d = index_dir.clone();
        TestApp::spawn_on_with(&url, move |s| s.index_dir = Some(d)).await
    };
    assert_eq!(
        fresh.search_ids("Patient?family=persistent").await,
        vec![key(&p)]
    );
    fresh.stop().await;
    drop(db);
}

#[tokio::test]
async fn reindex_rebuilds_from_the_database() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = app.search.registry.clone();
    let n = shcr::search::indexer::reindex(
        shcr::store::Store::from_pool(app.pool.clone()),
        registry,
        &dir.path().join("rebuilt"),
        app.base.clone(),
        shcr::search::indexer::REBUILD_MEMORY,
        |_| {},
    )
    .await
    .unwrap();
    // The 7 resources of the world, with their Provenance and Persons.
    let current: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_head WHERE NOT deleted")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n as i64, current);
    let reopened = TestApp::spawn_on_with(&app.db.url, {
        let d = dir.path().join("rebuilt");
        move |s| s.index_dir = Some(d)
    })
    .await;
    assert_eq!(
        reopened.search_ids("Patient?family=bronte").await,
        vec![key(&w.zoe)]
    );
}
