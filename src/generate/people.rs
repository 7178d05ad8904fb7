//! Synthetic persons, and the slightly different Patient record each trust keeps of them.

use serde_json::{Value, json};
use time::{Date, Duration};

use super::bundle::{self, NHS_VERIFICATION_CS, NHS_VERIFICATION_EXT};
use super::data::{AllergyDef, ConditionDef, DATA};
use super::dates::{self, TODAY};
use super::rng::Dice;
use super::trusts::{Trust, TrustKind, postcode};
use crate::identity::nhs_number::{self, NhsNumber};

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) lines: Vec<String>,
    pub(crate) city: &'static str,
    pub(crate) postcode: String,
}

/// The truth about one person, before any trust writes it down.
pub(crate) struct Person {
    pub(crate) key: String,
    pub(crate) nhs: NhsNumber,
    pub(crate) female: bool,
    pub(crate) given: &'static str,
    pub(crate) middle: Option<&'static str>,
    pub(crate) family: &'static str,
    pub(crate) birth: Date,
    pub(crate) age: u32,
    pub(crate) address: Address,
    pub(crate) previous_address: Address,
    pub(crate) mobile: Option<String>,
    pub(crate) landline: Option<String>,
    pub(crate) height_cm: f64,
    pub(crate) bmi: f64,
    /// Long-term conditions with their onset, shared by every trust that records them.
    pub(crate) chronic: Vec<(&'static ConditionDef, Date)>,
    pub(crate) allergies: Vec<&'static AllergyDef>,
    /// Indexes into the trust list, in the order the person first used them.
    pub(crate) trusts: Vec<usize>,
}

impl Person {
    pub(crate) fn has_sensitivity(&self, s: &str) -> bool {
        self.chronic.iter().any(|(c, _)| c.sensitivity == Some(s))
    }

    pub(crate) fn title(&self) -> Option<&'static str> {
        if self.age < 16 {
            None
        } else if self.female {
            Some(if self.age < 25 { "Miss" } else { "Mrs" })
        } else {
            Some("Mr")
        }
    }
}

/// Age bands (years, inclusive) weighted roughly like the population of England.
const AGE_BANDS: [(u32, u32, f64); 7] = [
    (0, 4, 5.5),
    (5, 15, 12.0),
    (16, 29, 17.0),
    (30, 44, 20.0),
    (45, 64, 25.0),
    (65, 79, 14.0),
    (80, 99, 6.5),
];

pub(crate) fn make_person(
    index: usize,
    nhs: NhsNumber,
    trusts: &[Trust],
    dice: &mut Dice,
) -> Person {
    let female = dice.chance(0.51);
    let band = AGE_BANDS[dice.weighted(&AGE_BANDS, |b| b.2).expect("bands")];
    let birth = dates::days_before_today(
        dice.between(i64::from(band.0) * 365 + 1, i64::from(band.1) * 365 + 364),
    );
    let age = dates::age_on(birth, TODAY);
    let names = if female {
        &DATA.given_female
    } else {
        &DATA.given_male
    };
    let given = *dice.pick(names);
    let middle = dice
        .chance(0.55)
        .then(|| *dice.pick(names))
        .filter(|m| *m != given);
    let family = *dice.pick(&DATA.family);
    let address = make_address(dice);
    let previous_address = make_address(dice);
    let mobile =
        (age >= 12 && dice.chance(0.85)).then(|| format!("07700 900{:03}", dice.below(1000)));
    let landline = dice.chance(0.35).then(|| {
        if dice.chance(0.8) {
            format!("0113 496 {:04}", dice.below(1000))
        } else {
            format!("01632 960{:03}", dice.below(1000))
        }
    });
    let height_cm = if age < 16 {
        dice.uniform(60.0 + f64::from(age) * 6.0, 80.0 + f64::from(age) * 6.5)
    } else if female {
        dice.uniform(150.0, 178.0)
    } else {
        dice.uniform(160.0, 193.0)
    };
    let bmi = dice.uniform(19.0, if age >= 40 { 38.0 } else { 32.0 });

    let mut chronic: Vec<(&'static ConditionDef, Date)> = Vec::new();
    for c in DATA
        .conditions
        .iter()
        .filter(|c| c.chronic && c.fits(age, female))
    {
        // Physical long-term conditions accumulate with age; the others do not, much.
        let factor = if c.sensitivity.is_some() {
            1.0
        } else if age >= 65 {
            2.0
        } else if age >= 45 {
            1.2
        } else {
            0.6
        };
        if chronic.len() < 4 && dice.chance(c.weight / 1000.0 * factor) {
            chronic.push((c, onset(birth, age, c.min_age, dice)));
        }
    }
    let allergies = allergies(dice);

    let mut person = Person {
        key: format!("P{:07}", index + 1),
        nhs,
        female,
        given,
        middle,
        family,
        birth,
        age,
        address,
        previous_address,
        mobile,
        landline,
        height_cm,
        bmi,
        chronic,
        allergies,
        trusts: Vec::new(),
    };
    person.trusts = choose_trusts(&person, trusts, dice);
    if person
        .trusts
        .iter()
        .any(|&t| trusts[t].kind == TrustKind::MentalHealth)
        && !person.has_sensitivity("mental-health")
        && !person.has_sensitivity("substance")
    {
        // Nobody is under a mental health trust without a reason for it.
        let pool: Vec<&'static ConditionDef> = DATA
            .conditions
            .iter()
            .filter(|c| c.chronic && c.sensitivity == Some("mental-health") && c.fits(age, female))
            .collect();
        if let Some(i) = dice.weighted(&pool, |c| c.weight) {
            person
                .chronic
                .push((pool[i], onset(birth, age, pool[i].min_age, dice)));
        }
    }
    person
}

fn onset(birth: Date, age: u32, min_age: u32, dice: &mut Dice) -> Date {
    let from = i64::from(min_age.min(age));
    let years = dice.between(from, i64::from(age).max(from));
    let d = birth + Duration::days(years * 365 + dice.between(0, 364));
    d.min(TODAY - Duration::days(30))
}

fn allergies(dice: &mut Dice) -> Vec<&'static AllergyDef> {
    let n = match dice.unit() {
        x if x < 0.78 => 0,
        x if x < 0.95 => 1,
        _ => 2,
    };
    let mut out: Vec<&'static AllergyDef> = Vec::new();
    for _ in 0..n {
        let i = dice
            .weighted(&DATA.allergies, |a| a.weight)
            .expect("allergies");
        if !out.iter().any(|a| a.code == DATA.allergies[i].code) {
            out.push(&DATA.allergies[i]);
        }
    }
    out
}

fn make_address(dice: &mut Dice) -> Address {
    let district = &DATA.districts[dice
        .weighted(&DATA.districts, |d| d.weight)
        .expect("districts")];
    let street = format!(
        "{} {}",
        dice.pick(&DATA.streets),
        dice.pick(&[
            "Road", "Street", "Lane", "Avenue", "Close", "Drive", "Crescent", "Grove", "Terrace",
            "Way", "Gardens", "Court", "View", "Place", "Road", "Street",
        ])
    );
    let lines = if dice.chance(0.15) {
        vec![
            format!("Flat {}", dice.between(1, 24)),
            format!("{} {}", dice.between(1, 120), street),
        ]
    } else {
        vec![format!("{} {}", dice.between(1, 220), street)]
    };
    Address {
        lines,
        city: district.town,
        postcode: postcode(district.code, dice),
    }
}

/// Which trusts see this person: 1–3, at most one GP practice, weighted by what they have.
fn choose_trusts(person: &Person, trusts: &[Trust], dice: &mut Dice) -> Vec<usize> {
    let wanted = match dice.unit() {
        x if x < 0.45 => 1,
        x if x < 0.80 => 2,
        _ => 3,
    }
    .min(trusts.len());
    let mental = person.has_sensitivity("mental-health");
    let substance = person.has_sensitivity("substance");
    let hiv = person.has_sensitivity("hiv");
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < wanted {
        let has_gp = chosen
            .iter()
            .any(|&t| trusts[t].kind == TrustKind::GpPractice);
        let weight = |t: &usize| -> f64 {
            if chosen.contains(t) {
                return 0.0;
            }
            match trusts[*t].kind {
                TrustKind::GpPractice if has_gp => 0.0,
                TrustKind::GpPractice => 6.0,
                TrustKind::Acute => 4.0 * if hiv { 3.0 } else { 1.0 },
                TrustKind::Community => {
                    1.5 * if substance { 3.0 } else { 1.0 }
                        * if person.age >= 75 { 2.0 } else { 1.0 }
                }
                TrustKind::MentalHealth => {
                    if mental {
                        6.0
                    } else if substance {
                        2.0
                    } else {
                        0.15
                    }
                }
            }
        };
        let indexes: Vec<usize> = (0..trusts.len()).collect();
        match dice.weighted(&indexes, weight) {
            Some(i) => chosen.push(i),
            None => break,
        }
    }
    if chosen.is_empty() {
        chosen.push(dice.index(trusts.len()));
    }
    chosen
}

/// What one trust has on file for a person, and how it differs from the truth.
pub(crate) struct PatientRecord {
    pub(crate) local_id: String,
    pub(crate) nhs: Option<String>,
    pub(crate) nhs_valid: Option<bool>,
    pub(crate) verification: Option<(&'static str, &'static str)>,
    pub(crate) given: String,
    pub(crate) middle: Option<&'static str>,
    pub(crate) family: String,
    pub(crate) gender: &'static str,
    pub(crate) birth: Date,
    pub(crate) address: Address,
    pub(crate) phones: Vec<(String, &'static str)>,
    pub(crate) variations: Vec<&'static str>,
}

const VERIFIED: (&str, &str) = ("01", "Number present and verified");
const NOT_TRACED: (&str, &str) = ("02", "Number present but not traced");
const TRACE_REQUIRED: (&str, &str) = ("03", "Trace required");

pub(crate) fn record_for(person: &Person, local_id: String, dice: &mut Dice) -> PatientRecord {
    let mut variations = Vec::new();

    let mut given = person.given.to_owned();
    let nick = DATA.nicknames.get(person.given);
    if let Some(nicks) = nick.filter(|_| dice.chance(0.12)) {
        given = (*dice.pick(nicks)).to_owned();
        variations.push("nickname");
    } else if dice.chance(0.03) {
        given = typo(&given, dice);
        variations.push("given-name-typo");
    }

    let mut family = person.family.to_owned();
    if person.female && person.age >= 20 && dice.chance(0.02) {
        family = loop {
            let f = *dice.pick(&DATA.family);
            if f != person.family {
                break f.to_owned();
            }
        };
        variations.push("family-name-changed");
    } else if dice.chance(0.04) {
        family = typo(&family, dice);
        variations.push("family-name-typo");
    }

    let mut middle = person.middle;
    if middle.is_some() && dice.chance(0.3) {
        middle = None;
        variations.push("middle-name-missing");
    }

    let mut birth = person.birth;
    if dice.chance(0.03)
        && let Some(swapped) = dates::swap_day_month(birth)
    {
        birth = swapped;
        variations.push("birth-date-day-month-swapped");
    }

    let mut address = person.address.clone();
    if dice.chance(0.10) {
        address = person.previous_address.clone();
        variations.push("previous-address");
    }

    let mut gender = if person.female { "female" } else { "male" };
    if dice.chance(0.005) {
        gender = "unknown";
        variations.push("gender-unknown");
    }

    let (nhs, nhs_valid, verification) = match dice.unit() {
        x if x < 0.04 => {
            variations.push("nhs-number-missing");
            (None, None, None)
        }
        x if x < 0.05 => {
            variations.push("nhs-number-invalid");
            (
                Some(mistype(&person.nhs, dice)),
                Some(false),
                Some(NOT_TRACED),
            )
        }
        _ => {
            let status = match dice.unit() {
                x if x < 0.88 => VERIFIED,
                x if x < 0.96 => NOT_TRACED,
                _ => TRACE_REQUIRED,
            };
            if status != VERIFIED {
                variations.push("nhs-number-unverified");
            }
            (
                Some(person.nhs.as_str().to_owned()),
                Some(true),
                Some(status),
            )
        }
    };

    let mut phones = Vec::new();
    if let Some(m) = &person.mobile
        && dice.chance(0.9)
    {
        phones.push((m.clone(), "mobile"));
    }
    if let Some(l) = &person.landline
        && dice.chance(0.8)
    {
        phones.push((l.clone(), "home"));
    }

    PatientRecord {
        local_id,
        nhs,
        nhs_valid,
        verification,
        given,
        middle,
        family,
        gender,
        birth,
        address,
        phones,
        variations,
    }
}

/// One keying slip: swapped neighbours, a dropped or doubled letter, or a wrong letter.
/// The first letter is kept because it is rarely the one mistyped.
fn typo(name: &str, dice: &mut Dice) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() < 3 {
        return format!("{name}{}", chars.last().copied().unwrap_or('e'));
    }
    for _ in 0..8 {
        let mut c = chars.clone();
        let i = 1 + dice.index(c.len() - 1);
        match dice.below(4) {
            0 if i + 1 < c.len() => c.swap(i, i + 1),
            1 => {
                c.remove(i);
            }
            2 => c.insert(i, c[i]),
            _ => {
                let vowels = ['a', 'e', 'i', 'o', 'u', 'y'];
                if c[i].is_ascii_lowercase() {
                    c[i] = *dice.pick(&vowels);
                }
            }
        }
        let s: String = c.into_iter().collect();
        if s != name && s.chars().any(|ch| ch.is_alphabetic()) {
            return s;
        }
    }
    format!("{name}e")
}

/// The NHS number with one digit after the `999` prefix changed. Modulus 11 detects every
/// single-digit substitution, so the result never passes the check.
fn mistype(nhs: &NhsNumber, dice: &mut Dice) -> String {
    let mut digits: Vec<u8> = nhs.as_str().bytes().collect();
    let i = dice.between(3, 9) as usize;
    let old = digits[i];
    let mut new = old;
    while new == old {
        new = b'0' + dice.below(10) as u8;
    }
    digits[i] = new;
    String::from_utf8(digits).expect("digits")
}

pub(crate) fn patient_resource(
    record: &PatientRecord,
    person: &Person,
    trust: &Trust,
    gp: Option<&Trust>,
) -> Value {
    let mut identifiers = Vec::new();
    if let Some(nhs) = &record.nhs {
        let mut id = bundle::identifier(nhs_number::SYSTEM, nhs);
        if let Some((code, display)) = record.verification {
            id["extension"] = json!([{
                "url": NHS_VERIFICATION_EXT,
                "valueCodeableConcept": bundle::status_concept(NHS_VERIFICATION_CS, code, display),
            }]);
        }
        identifiers.push(id);
    }
    identifiers.push(bundle::identifier(
        &trust.system("local-patient-identifier"),
        &record.local_id,
    ));

    let mut given = vec![record.given.clone()];
    given.extend(record.middle.map(str::to_owned));
    let mut name = json!({ "use": "official", "family": record.family, "given": given });
    if let Some(title) = person.title() {
        name["prefix"] = json!([title]);
    }

    let mut patient = json!({
        "resourceType": "Patient",
        "meta": bundle::meta("Patient"),
        "identifier": identifiers,
        "active": true,
        "name": [name],
        "gender": record.gender,
        "birthDate": dates::fhir_date(record.birth),
        "address": [{
            "use": "home",
            "line": record.address.lines,
            "city": record.address.city,
            "postalCode": record.address.postcode,
            "country": "GB",
        }],
        "managingOrganization": trust.reference(),
    });
    if !record.phones.is_empty() {
        patient["telecom"] = record
            .phones
            .iter()
            .map(|(value, use_)| json!({ "system": "phone", "value": value, "use": use_ }))
            .collect();
    }
    if let Some(gp) = gp {
        patient["generalPractitioner"] = json!([if gp.ods == trust.ods {
            gp.reference()
        } else {
            gp.identifier_reference()
        }]);
    }
    patient
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_change_the_name_but_keep_the_first_letter() {
        let mut d = Dice::new(3, 3);
        for name in ["Smith", "O'Brien", "Li", "Okonkwo", "Da Costa"] {
            for _ in 0..50 {
                let t = typo(name, &mut d);
                assert_ne!(t, name);
                assert_eq!(t.chars().next(), name.chars().next());
            }
        }
    }

    #[test]
    fn mistyped_nhs_numbers_never_pass_the_check() {
        let mut d = Dice::new(5, 5);
        for stem in 999_000_000..999_002_000 {
            if let Ok(n) = NhsNumber::from_stem(stem) {
                let bad = mistype(&n, &mut d);
                assert!(bad.starts_with("999"));
                assert!(NhsNumber::parse(&bad).is_err(), "{bad}");
            }
        }
    }
}
