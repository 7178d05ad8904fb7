use serde_json::{Value, json};

use super::*;

fn eval(expr: &str, resource: &Value) -> Vec<Value> {
    let e = compile(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
    e.evaluate(resource)
        .into_iter()
        .map(|n| match n {
            Node::Element { value, .. } => value.clone(),
            Node::Boolean(b) => json!(b),
            Node::String(s) => json!(s),
            Node::Number(x) => json!(x),
            Node::Resolved { resource_type } => json!({ "resolved": resource_type }),
        })
        .collect()
}

fn types(expr: &str, resource: &Value) -> Vec<&'static str> {
    let e = Box::leak(Box::new(compile(expr).unwrap()));
    let r = Box::leak(Box::new(resource.clone()));
    e.evaluate(r).iter().map(Node::type_name).collect()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "name": [
            {"use": "official", "family": "Smith", "given": ["Zoë", "Anne"]},
            {"use": "nickname", "given": ["Zo"]}
        ],
        "telecom": [
            {"system": "phone", "value": "0113 123"},
            {"system": "email", "value": "zoe@example.org"}
        ],
        "deceasedBoolean": false,
        "birthDate": "1970-03-04",
        "_birthDate": {"extension": [{"url": "http://example.org/time", "valueTime": "10:00:00"}]},
        "extension": [{
            "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
            "valueCodeableConcept": {"coding": [{"code": "G"}]}
        }],
        "generalPractitioner": [{"reference": "Practitioner/gp1"}],
        "managingOrganization": {"reference": "#org"},
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Leeds GP"}]
    })
}

#[test]
fn paths_flatten_repeating_elements() {
    let p = patient();
    assert_eq!(
        eval("Patient.name.given", &p),
        vec![json!("Zoë"), json!("Anne"), json!("Zo")]
    );
    assert_eq!(eval("Patient.name.family", &p), vec![json!("Smith")]);
    assert_eq!(eval("Patient.address.city", &p), Vec::<Value>::new());
    assert_eq!(types("Patient.name", &p), vec!["HumanName", "HumanName"]);
    assert_eq!(types("Patient.birthDate", &p), vec!["date"]);
}

#[test]
fn a_leading_type_that_does_not_match_selects_nothing() {
    let p = patient();
    assert!(eval("Observation.code", &p).is_empty());
    assert_eq!(eval("Resource.id", &p), vec![json!("p1")]);
    assert_eq!(eval("DomainResource.id", &p), vec![json!("p1")]);
    let bundle = json!({"resourceType": "Bundle", "id": "b"});
    assert!(eval("DomainResource.id", &bundle).is_empty());
}

#[test]
fn unions_over_resource_types_take_the_matching_branch() {
    let expr = "Patient.telecom.where(system='email') | Person.telecom.where(system='email') \
                | Practitioner.telecom.where(system='email')";
    let p = patient();
    assert_eq!(
        eval(expr, &p),
        vec![json!({"system": "email", "value": "zoe@example.org"})]
    );
    let e = compile(expr).unwrap();
    let bound = e.for_resource_type("Practitioner").unwrap();
    assert_eq!(
        bound.expr,
        compile("Practitioner.telecom.where(system='email')")
            .unwrap()
            .expr
    );
    assert!(e.for_resource_type("Observation").is_none());
}

#[test]
fn union_removes_repeats() {
    let p = patient();
    assert_eq!(
        eval("Patient.name.family | Patient.name.family", &p).len(),
        1
    );
}

#[test]
fn choice_elements_are_found_under_their_typed_json_name() {
    let obs = json!({
        "resourceType": "Observation",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
        "effectiveDateTime": "2020-03-04T10:00:00Z",
        "component": [
            {"code": {"text": "a"}, "valueString": "x"},
            {"code": {"text": "b"}, "valueQuantity": {"value": 1}}
        ]
    });
    assert_eq!(
        eval("Observation.value as Quantity", &obs),
        vec![json!({"value": 5.4, "unit": "mmol/L"})]
    );
    assert!(eval("Observation.value as CodeableConcept", &obs).is_empty());
    assert!(eval("Observation.value.ofType(string)", &obs).is_empty());
    assert_eq!(
        eval("(Observation.effective as dateTime)", &obs),
        vec![json!("2020-03-04T10:00:00Z")]
    );
    assert!(eval("(Observation.effective as Period)", &obs).is_empty());
    assert_eq!(
        eval("Observation.value.as(Quantity).unit", &obs),
        vec![json!("mmol/L")]
    );
    assert_eq!(
        eval("Observation.component.value as Quantity", &obs),
        vec![json!({"value": 1})]
    );
    assert_eq!(
        eval(
            "(Observation.value as string) | (Observation.component.value as string)",
            &obs
        ),
        vec![json!("x")]
    );
    assert_eq!(types("Observation.effective", &obs), vec!["dateTime"]);
    assert_eq!(
        eval("Observation.value is Quantity", &obs),
        vec![json!(true)]
    );
}

#[test]
fn system_type_names_select_the_fhir_primitive() {
    let obs = json!({"resourceType": "Observation", "valueDateTime": "2020"});
    let focus = json!({"resourceType": "Observation", "valueDateTime": "2020"});
    assert_eq!(
        eval("Observation.value.as(DateTime)", &obs),
        vec![json!("2020")]
    );
    assert_eq!(
        eval("Observation.value.as(System.DateTime)", &focus),
        vec![json!("2020")]
    );
    assert_eq!(
        eval("Observation.value.as(FHIR.dateTime)", &focus),
        vec![json!("2020")]
    );
}

#[test]
fn age_is_a_quantity_but_canonical_is_not_a_uri() {
    let c = json!({"resourceType": "Condition", "onsetAge": {"value": 40}});
    assert_eq!(eval("Condition.onset.as(Age)", &c).len(), 1);
    assert_eq!(eval("Condition.onset.ofType(Quantity)", &c).len(), 1);
    let m = json!({"resourceType": "ConceptMap", "sourceCanonical": "http://x"});
    assert!(eval("(ConceptMap.source as uri)", &m).is_empty());
    assert_eq!(
        eval("(ConceptMap.source as canonical)", &m),
        vec![json!("http://x")]
    );
}

#[test]
fn where_filters_with_equality_and_logic() {
    let p = patient();
    assert_eq!(
        eval("Patient.name.where(use = 'official').family", &p),
        vec![json!("Smith")]
    );
    assert_eq!(
        eval(
            "Patient.name.where(use = 'official' or use = 'nickname').given.count()",
            &p
        ),
        vec![json!(3.0)]
    );
    assert_eq!(
        eval(
            "Patient.name.where(use != 'official' and given.exists()).given",
            &p
        ),
        vec![json!("Zo")]
    );
    assert_eq!(
        eval("Patient.name.where(family.empty()).given", &p),
        vec![json!("Zo")]
    );
    assert_eq!(
        eval("Patient.name.where($this.use ~ 'OFFICIAL').family", &p),
        vec![json!("Smith")]
    );
    assert_eq!(
        eval("Patient.name.where(use in ('a' | 'nickname')).given", &p),
        vec![json!("Zo")]
    );
}

#[test]
fn resolve_is_answers_from_the_reference_alone() {
    let obs = |reference: Value| {
        json!({
            "resourceType": "Observation",
            "subject": reference,
            "contained": [{"resourceType": "Patient", "id": "c1"}]
        })
    };
    let expr = "Observation.subject.where(resolve() is Patient)";
    for (subject, is_patient) in [
        (json!({"reference": "Patient/1"}), true),
        (json!({"reference": "Patient/1/_history/3"}), true),
        (
            json!({"reference": "https://other.nhs.uk/fhir/Patient/9"}),
            true,
        ),
        (json!({"reference": "Group/1"}), false),
        (
            json!({"reference": "urn:uuid:0a6c5a3e-0000-4000-8000-000000000000"}),
            false,
        ),
        (
            json!({"reference": "urn:uuid:0a6c5a3e-0000-4000-8000-000000000000", "type": "Patient"}),
            true,
        ),
        (
            json!({"identifier": {"value": "x"}, "type": "Patient"}),
            true,
        ),
        (json!({"reference": "#c1"}), true),
        (json!({"reference": "#missing"}), false),
    ] {
        let o = obs(subject.clone());
        assert_eq!(eval(expr, &o).len(), is_patient as usize, "{subject}");
    }
    let p = patient();
    assert_eq!(
        eval("Patient.managingOrganization.resolve().name", &p),
        vec![json!("Leeds GP")]
    );
}

#[test]
fn extensions_by_url_and_their_values() {
    let p = patient();
    let url = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory";
    let want = vec![json!({"coding": [{"code": "G"}]})];
    assert_eq!(eval(&format!("Patient.extension('{url}').value"), &p), want);
    assert_eq!(
        eval(&format!("Patient.extension.where(url = '{url}').value"), &p),
        want
    );
    assert_eq!(
        types(&format!("Patient.extension('{url}').value"), &p),
        vec!["CodeableConcept"]
    );
    assert_eq!(
        eval(
            &format!("Patient.extension('{url}').value.ofType(CodeableConcept).coding.code"),
            &p
        ),
        vec![json!("G")]
    );
    assert!(eval("Patient.extension('http://other').value", &p).is_empty());
    // Primitive extensions (`_birthDate`) are not visited.
    assert!(eval("Patient.birthDate.extension.value", &p).is_empty());
}

#[test]
fn collection_functions() {
    let p = patient();
    assert_eq!(eval("Patient.name.given.first()", &p), vec![json!("Zoë")]);
    assert_eq!(eval("Patient.name.given.last()", &p), vec![json!("Zo")]);
    assert_eq!(
        eval("Patient.name.given.tail().first()", &p),
        vec![json!("Anne")]
    );
    assert_eq!(eval("Patient.name[1].given", &p), vec![json!("Zo")]);
    assert_eq!(
        eval("Patient.name.given.skip(1).take(1)", &p),
        vec![json!("Anne")]
    );
    assert_eq!(eval("Patient.name.exists()", &p), vec![json!(true)]);
    assert_eq!(eval("Patient.address.exists()", &p), vec![json!(false)]);
    assert_eq!(eval("Patient.address.empty()", &p), vec![json!(true)]);
    assert_eq!(
        eval("Patient.name.exists(use = 'old')", &p),
        vec![json!(false)]
    );
    assert_eq!(
        eval("Patient.name.all(given.exists())", &p),
        vec![json!(true)]
    );
    assert_eq!(
        eval("Patient.name.family.single()", &p),
        vec![json!("Smith")]
    );
    assert_eq!(eval("Patient.name.select(given.first())", &p).len(), 2);
    assert_eq!(
        eval("Patient.name.use.distinct().count()", &p),
        vec![json!(2.0)]
    );
    assert_eq!(eval("Patient.active.hasValue()", &p), vec![json!(false)]);
    assert_eq!(eval("Patient.birthDate.hasValue()", &p), vec![json!(true)]);
    assert_eq!(eval("Patient.name.exists().not()", &p), vec![json!(false)]);
    assert_eq!(
        eval("Patient.name.trace('n').family", &p),
        vec![json!("Smith")]
    );
}

#[test]
fn boolean_logic_is_three_valued() {
    // R4 Patient `deceased`: a patient with no deceased[x] is not deceased.
    let expr = "Patient.deceased.exists() and Patient.deceased != false";
    let with = |deceased: Value| {
        let mut p = json!({"resourceType": "Patient"});
        if let Value::Object(d) = deceased {
            p.as_object_mut().unwrap().extend(d);
        }
        eval(expr, &p)
    };
    assert_eq!(with(json!(null)), vec![json!(false)]);
    assert_eq!(with(json!({"deceasedBoolean": false})), vec![json!(false)]);
    assert_eq!(with(json!({"deceasedBoolean": true})), vec![json!(true)]);
    assert_eq!(
        with(json!({"deceasedDateTime": "2020-01-01"})),
        vec![json!(true)]
    );
    let p = json!({"resourceType": "Patient"});
    assert!(eval("Patient.active and true", &p).is_empty());
    assert_eq!(eval("Patient.active or true", &p), vec![json!(true)]);
    assert_eq!(eval("false implies Patient.active", &p), vec![json!(true)]);
    assert!(eval("true implies Patient.active", &p).is_empty());
    assert_eq!(eval("true xor false", &p), vec![json!(true)]);
}

#[test]
fn resource_variable_reaches_the_root_from_a_component() {
    let seq = json!({
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}},
        "variant": [{"start": 10, "end": 12}]
    });
    let root = Node::resource(&seq);
    let items = compile("MolecularSequence.variant").unwrap();
    let chromosome = compile("%resource.referenceSeq.chromosome").unwrap();
    let items = items.evaluate(&seq);
    assert_eq!(items.len(), 1);
    let got = chromosome.evaluate_on(items[0], root);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].type_name(), "CodeableConcept");
    let start = compile("start").unwrap();
    assert_eq!(start.evaluate_on(items[0], root)[0].as_number(), Some(10.0));
}

#[test]
fn resources_inside_resources_take_their_declared_type() {
    let bundle = json!({
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c", "title": "Discharge"}}]
    });
    assert_eq!(
        types("Bundle.entry[0].resource", &bundle),
        vec!["Composition"]
    );
    assert_eq!(
        eval("Bundle.entry[0].resource.title", &bundle),
        vec![json!("Discharge")]
    );
    assert_eq!(
        eval("Bundle.entry.resource.ofType(Composition).id", &bundle),
        vec![json!("c")]
    );
}

#[test]
fn literals_and_comparisons() {
    let p = patient();
    assert_eq!(eval("'a\\'b'", &p), vec![json!("a'b")]);
    assert_eq!(
        eval("Patient.name.given.count() > 2", &p),
        vec![json!(true)]
    );
    assert_eq!(eval("Patient.birthDate < '1980'", &p), vec![json!(true)]);
    assert_eq!(eval("-1.5 <= 0", &p), vec![json!(true)]);
    assert_eq!(eval("{}.exists()", &p), vec![json!(false)]);
    assert_eq!(eval("Patient.`name`.family", &p), vec![json!("Smith")]);
    assert_eq!(
        eval("Patient.name.family // a comment\n", &p),
        vec![json!("Smith")]
    );
}

#[test]
fn unsupported_constructs_are_reported_by_name() {
    for (expr, what) in [
        ("Patient.name.given + 'x'", "arithmetic"),
        ("Patient.name.given & 'x'", "arithmetic"),
        ("Observation.value * 2", "arithmetic"),
        ("Patient.birthDate > @2020-01-01", "date/time literal"),
        ("Observation.value > 5 'mg'", "quantity literals"),
        ("Patient.name.given.substring(1)", "function substring()"),
        ("%ucum", "%ucum"),
        ("Patient.name.given[$index]", "$index"),
    ] {
        match compile(expr) {
            Err(FhirPathError::Unsupported(msg)) => assert!(msg.contains(what), "{expr}: {msg}"),
            other => panic!("{expr}: {other:?}"),
        }
    }
    assert!(matches!(
        compile("Observation.value as Quantityy"),
        Err(FhirPathError::UnknownType(t)) if t == "Quantityy"
    ));
    for bad in [
        "Patient.",
        "Patient.name.where(",
        "'open",
        "Patient..name",
        "(Patient",
    ] {
        assert!(
            matches!(compile(bad), Err(FhirPathError::Syntax { .. })),
            "{bad}"
        );
    }
}

#[test]
fn checking_against_the_model_finds_mistakes() {
    let check = |expr: &str, rt: &str| {
        compile(expr)
            .unwrap()
            .check(&StaticTypes::of(rt).unwrap(), rt)
            .map(|_| ())
    };
    assert_eq!(check("Patient.name.family", "Patient"), Ok(()));
    assert_eq!(
        check("Observation.value.as(DateTime)", "Observation"),
        Ok(())
    );
    assert_eq!(check("Bundle.entry[0].resource.title", "Bundle"), Ok(()));
    assert_eq!(
        check("Patient.name.familly", "Patient"),
        Err(FhirPathError::Model(
            "no element 'familly' on HumanName".into()
        ))
    );
    assert!(check("Observation.value as Reference", "Observation").is_err());
    assert!(check("Observation.code.where(sytem = 'x')", "Observation").is_err());
    assert!(check("Patient.name", "Observation").is_err());
}
