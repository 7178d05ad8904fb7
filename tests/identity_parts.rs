//! The address scored as independent parts (`address.compare = "parts"` in the matching file),
//! against a real PostgreSQL and the real HTTP server. Its own test binary: the matching file is
//! installed once per process, and the `identity` tests run with the built-in file (address
//! scored whole).

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "identity/support.rs"]
mod support;

use common::TestApp;
use shcr::identity::demographics::Demographics;
use shcr::identity::scoring::{self, AddressCompare, MatchConfig};
use support::*;

/// The built-in file with the address's parts scored apart.
fn install_parts() {
    let mut c = MatchConfig::built_in();
    c.address.compare = AddressCompare::Parts;
    scoring::install(c);
    assert_eq!(scoring::config().address.compare, AddressCompare::Parts);
}

/// A married name and a postcode slip: scored whole, the address agrees only on its first line
/// (`address.line`) and the pair waits for review; scored as parts, house number and street agree
/// and the postcode is one slip off, each its own evidence, and the record links.
#[tokio::test]
async fn with_the_parts_scored_apart_a_new_family_name_and_a_postcode_slip_still_link() {
    install_parts();
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let married = Demo {
        family: "Okafor",
        postcode: "LS1 4BA",
        ..ROBERT
    };
    let b = create_as(&app, "RX2", &patient("RX2", None, &married)).await;
    assert_eq!(person_of(&app, &b).await, person_of(&app, &a).await);
    assert_eq!(grade_of(&app, &b).await, ("probable".into(), "auto".into()));
    // The same pair scored with the whole address would only be a possible match.
    let whole = MatchConfig::built_in();
    let (x, y) = (
        Demographics::from_patient(&patient("RX1", None, &ROBERT)),
        Demographics::from_patient(&patient("RX2", None, &married)),
    );
    let s = scoring::compare_with(&whole, &x, &y);
    assert_eq!(s.grade, scoring::Grade::Possible, "{s:?}");
}

/// Parts scored apart still keep a household apart when names, sex and birth date differ, and
/// twins (one family name, one birthday, one home) still wait for review.
#[tokio::test]
async fn with_the_parts_scored_apart_a_household_stays_apart_and_twins_wait_for_review() {
    install_parts();
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let spouse = Demo {
        given: "Margaret",
        gender: "female",
        birth: "1972-11-23",
        ..ROBERT
    };
    let b = create_as(&app, "RX2", &patient("RX2", None, &spouse)).await;
    assert_ne!(person_of(&app, &b).await, person_of(&app, &a).await);
    let twin = Demo {
        given: "Edward",
        ..ROBERT
    };
    let c = create_as(&app, "RX2", &patient("RX2", None, &twin)).await;
    assert_ne!(person_of(&app, &c).await, person_of(&app, &a).await);
    let reviews = reviews_of(&app, &c).await;
    assert_eq!(reviews, 1, "the twin waits for review");
}

/// A's address with the building first, as a trust writes it.
/// Review items naming the Patient.
async fn reviews_of(app: &TestApp, patient_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM identity_review WHERE patient_id = $1")
        .bind(patient_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn with_lines(mut p: serde_json::Value, lines: &[&str]) -> serde_json::Value {
    p["address"][0]["line"] = serde_json::json!(lines);
    p
}

/// The same address written the other way round by another trust (`Rose Cottage, 12 Mill Lane`
/// against `12 Mill Lane, Rose Cottage`), with a married name and a postcode slip: the first
/// lines cross (`street.crossed`) and the names left over agree as second lines, and the record
/// links. Read as before (first lines only: `ROSE COTTAGE` against `12 MILL LANE`) the pair
/// only waits for review. The spouse, in the same building written the same way, is not linked.
#[tokio::test]
async fn with_the_parts_scored_apart_lines_written_the_other_way_round_still_link() {
    install_parts();
    let app = TestApp::spawn().await;
    let building_first = ["Rose Cottage", "12 Mill Lane"];
    let street_first = ["12 Mill Lane", "Rose Cottage"];
    let a_resource = with_lines(patient("RX1", None, &ROBERT), &building_first);
    let a = create_as(&app, "RX1", &a_resource).await;
    let married = Demo {
        family: "Okafor",
        postcode: "LS1 4BA",
        ..ROBERT
    };
    let b_resource = with_lines(patient("RX2", None, &married), &street_first);
    let b = create_as(&app, "RX2", &b_resource).await;
    assert_eq!(person_of(&app, &b).await, person_of(&app, &a).await);
    assert_eq!(grade_of(&app, &b).await, ("probable".into(), "auto".into()));
    let (x, y) = (
        Demographics::from_patient(&a_resource),
        Demographics::from_patient(&b_resource),
    );
    let s = scoring::compare(&x, &y);
    assert!(s.levels.contains(&"street.crossed"), "{s:?}");
    assert!(s.levels.contains(&"second_line.exact"), "{s:?}");
    // Without the second lines the first lines simply differ.
    let (mut x, mut y) = (x, y);
    x.address_line2 = None;
    y.address_line2 = None;
    let before = scoring::compare(&x, &y);
    assert!(before.levels.contains(&"street.disagree"), "{before:?}");
    assert_eq!(before.grade, scoring::Grade::Possible, "{before:?}");

    let spouse = Demo {
        given: "Margaret",
        gender: "female",
        birth: "1972-11-23",
        ..ROBERT
    };
    let c = create_as(
        &app,
        "RX2",
        &with_lines(patient("RX2", None, &spouse), &street_first),
    )
    .await;
    assert_ne!(person_of(&app, &c).await, person_of(&app, &a).await);
    // One surname, one building: at most a person decides.
    let reviews = reviews_of(&app, &c).await;
    assert!(reviews <= 1, "{reviews}");
}
