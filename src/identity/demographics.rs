//! The demographics the matcher compares, read from a Patient and normalised once: upper-case
//! ASCII names without punctuation, their phonetic codes, the birth date, sex, postcode and
//! first address line, and the NHS number only if it passes the check digit.

use rphonetic::{DoubleMetaphone, Encoder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::Date;
use unicode_normalization::UnicodeNormalization;

use super::nhs_number::{self, NhsNumber};

/// UK Core NHS number verification status extension (on `Patient.identifier`).
pub const VERIFICATION_EXT: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
/// "01 Number present and verified": the only status that allows a deterministic link.
pub const VERIFIED: &str = "01";

/// Tag shcr puts in `meta.tag` of a Patient whose NHS number fails the format or check digit.
/// The number is kept as sent (it is the trust's record) but never used for matching.
pub const FLAG_SYSTEM: &str = "https://fhir.shcr.example.nhs.uk/CodeSystem/identity-flag";
pub const FLAG_INVALID_NHS: &str = "invalid-nhs-number";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Demographics {
    pub nhs_number: Option<String>,
    pub nhs_verified: bool,
    /// An NHS number was present but failed the format or check digit.
    pub nhs_invalid: bool,
    pub family: Option<String>,
    pub family_code: Option<String>,
    pub family_alt: Option<String>,
    pub given: Option<String>,
    pub given_code: Option<String>,
    /// ISO date; only full dates (a year-only birth date compares as missing).
    pub birth_date: Option<String>,
    pub sex: Option<String>,
    pub postcode: Option<String>,
    pub address_line: Option<String>,
    /// Town or city of the home address (absent in rows written before it was compared).
    #[serde(default)]
    pub town: Option<String>,
    /// The home address's second line (a building, an estate, a locality), compared only with
    /// the address scored as parts. Absent from rows written before it was kept; not written
    /// when missing, so most records' stored demographics stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_line2: Option<String>,
}

impl Demographics {
    pub fn from_patient(patient: &Value) -> Demographics {
        let mut d = Demographics::default();
        for id in patient["identifier"].as_array().into_iter().flatten() {
            if id["system"].as_str() != Some(nhs_number::SYSTEM) {
                continue;
            }
            let Some(value) = id["value"].as_str() else {
                continue;
            };
            match NhsNumber::parse(value) {
                Ok(n) => {
                    d.nhs_number = Some(n.as_str().to_string());
                    d.nhs_verified = verification_status(id).as_deref() == Some(VERIFIED);
                }
                Err(_) => d.nhs_invalid = true,
            }
            break;
        }
        let name = official_name(patient);
        if let Some(name) = name {
            d.family = name["family"]
                .as_str()
                .map(normalise_name)
                .filter(|s| !s.is_empty());
            d.given = name["given"]
                .as_array()
                .and_then(|g| g.first())
                .and_then(Value::as_str)
                .map(normalise_name)
                .filter(|s| !s.is_empty());
        }
        if let Some(f) = &d.family {
            let (p, a) = double_metaphone(f);
            d.family_code = Some(p);
            d.family_alt = Some(a);
        }
        d.given_code = d.given.as_deref().map(|g| double_metaphone(g).0);
        d.birth_date = patient["birthDate"]
            .as_str()
            .filter(|s| parse_date(s).is_some())
            .map(str::to_string);
        d.sex = patient["gender"]
            .as_str()
            .filter(|g| matches!(*g, "male" | "female"))
            .map(str::to_string);
        let address = home_address(patient);
        if let Some(a) = address {
            d.postcode = a["postalCode"]
                .as_str()
                .map(normalise_postcode)
                // UK postcodes have 5–7 characters; 4-digit ones (Australia, FEBRL) still compare.
                .filter(|p| p.len() >= 4);
            let line = |i: usize| {
                a["line"]
                    .as_array()
                    .and_then(|l| l.get(i))
                    .and_then(Value::as_str)
                    .map(normalise_line)
                    .filter(|s| !s.is_empty())
            };
            d.address_line = line(0);
            d.address_line2 = line(1);
            d.town = a["city"]
                .as_str()
                .map(normalise_line)
                .filter(|s| !s.is_empty());
        }
        d
    }

    pub fn birth(&self) -> Option<Date> {
        self.birth_date.as_deref().and_then(parse_date)
    }

    pub fn birth_year(&self) -> Option<i32> {
        self.birth().map(|d| d.year())
    }

    /// Phonetic family and given name in alphabetical order (`JN|SM0`), a blocking key that
    /// also finds a record whose two names were exchanged.
    pub fn name_key(&self) -> Option<String> {
        match (&self.family_code, &self.given_code) {
            (Some(f), Some(g)) if !f.is_empty() && !g.is_empty() => {
                let (x, y) = if f <= g { (f, g) } else { (g, f) };
                Some(format!("{x}|{y}"))
            }
            _ => None,
        }
    }

    /// The house as a blocking key (`12|MIL|LS1`): the house number, the first three letters
    /// of the street and the locality — the postcode's outward code, or the first three
    /// letters of the town where the postcode is not a UK one (FEBRL's four digits) or is
    /// missing (neither: no key). It finds records that kept their address while birth date,
    /// postcode and names were mistyped, even with a typo in the street's or town's later
    /// letters (`3 CULLEN STREET`/`3 CULLEB STREET`). The locality keeps it selective on UK data: a number and
    /// three letters alone recur on many streets of an ICS. A line naming only a flat (`FLAT
    /// 3`) names no house. Migration 0034 computes the same in SQL for rows written before.
    pub fn line_key(&self) -> Option<String> {
        let line = self.address_line.as_deref()?;
        let (number, _) = line_parts(line);
        let street = line.split_whitespace().find(|w| {
            w.len() >= 3
                && w.bytes().all(|b| b.is_ascii_alphabetic())
                && !matches!(*w, "FLAT" | "APARTMENT" | "UNIT" | "APT")
        })?;
        let locality = self.locality()?;
        (!number.is_empty()).then(|| format!("{number}|{}|{locality}", prefix(street, 3)))
    }

    /// The first three letters of family and given name, in byte order (so exchanged names
    /// share it), and the locality (`JOH|SMI|LS1`): a typo-tolerant counterpart of `name_key`
    /// within one district, for records whose house number, birth date and postcode were
    /// mistyped or left out and whose names no longer sound alike (`MACY DONALDSON`/`MACY
    /// DONALWSON`). Names alone would gather every `SMI|JOH` of an ICS. A record with one name
    /// only (no given name, as in `- WEBB`) has no phonetic name key, so it takes this key with
    /// the missing name empty (`|WEB|EAS`): shared only with other one-name records of the
    /// district, it stays small. Migrations 0034 and 0044 compute the same in SQL for rows
    /// written before.
    pub fn name_place_key(&self) -> Option<String> {
        if self.family.is_none() && self.given.is_none() {
            return None;
        }
        fn name(n: &Option<String>) -> &str {
            n.as_deref().map_or("", |n| prefix(n, 3))
        }
        let (f, g) = (name(&self.family), name(&self.given));
        let (x, y) = if f <= g { (f, g) } else { (g, f) };
        Some(format!("{x}|{y}|{}", self.locality()?))
    }

    /// Where a record lives, for blocking: the postcode's outward code, or the first three
    /// letters of the town where the postcode is not a UK one or is missing.
    fn locality(&self) -> Option<&str> {
        self.outward()
            .or_else(|| self.town.as_deref().map(|t| prefix(t, 3)))
    }

    /// Postcode district (outward code): all but the last three characters of a UK postcode.
    pub fn outward(&self) -> Option<&str> {
        self.postcode
            .as_deref()
            .filter(|p| p.len() >= 5)
            .map(|p| &p[..p.len() - 3])
    }
}

/// The first `n` characters of an ASCII string (normalised fields are ASCII).
fn prefix(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// An address line split into its house number and its street: the words holding a digit are
/// the number, the others the street (`FLAT 3 12 MILL LANE` → `3 12`, `FLAT MILL LANE`; `12A
/// MILL LANE` → `12A`, `MILL LANE`). Compared as one string, `12 MILL LANE` and `14 MILL LANE`
/// look alike, yet they are a neighbour's address or a mistyped number; compared apart, the
/// street can agree while the number does not.
pub fn line_parts(line: &str) -> (String, String) {
    let (number, street): (Vec<&str>, Vec<&str>) = line
        .split_whitespace()
        .partition(|w| w.bytes().any(|b| b.is_ascii_digit()));
    (number.join(" "), street.join(" "))
}

/// The status code of the verification extension on an NHS number identifier.
fn verification_status(identifier: &Value) -> Option<String> {
    identifier["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(VERIFICATION_EXT))?["valueCodeableConcept"]["coding"]
        .as_array()?
        .iter()
        .find_map(|c| c["code"].as_str().map(str::to_string))
}

/// The official name, else the usual one, else the first.
fn official_name(patient: &Value) -> Option<&Value> {
    let names = patient["name"].as_array()?;
    names
        .iter()
        .find(|n| n["use"] == "official")
        .or_else(|| names.iter().find(|n| n["use"] == "usual"))
        .or_else(|| names.first())
}

fn home_address(patient: &Value) -> Option<&Value> {
    let addresses = patient["address"].as_array()?;
    addresses
        .iter()
        .find(|a| a["use"] == "home" && a["period"]["end"].is_null())
        .or_else(|| addresses.first())
}

pub(crate) fn parse_date(s: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, format).ok()
}

/// Folds accents, keeps letters, upper-case: `O'Brien` and `OBRIEN`, `Zoë` and `ZOE` agree.
pub fn normalise_name(s: &str) -> String {
    s.nfkd()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

pub fn normalise_postcode(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Upper-case words of letters and digits, single-spaced (`12, Mill  Lane` → `12 MILL LANE`).
pub fn normalise_line(s: &str) -> String {
    s.nfkd()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Primary and alternate Double Metaphone codes (commons-codec's algorithm, via rphonetic).
pub fn double_metaphone(s: &str) -> (String, String) {
    let r = DoubleMetaphone::new(Some(6)).double_metaphone(s);
    let primary = r.primary();
    let alternate = r.alternate();
    // An empty code (a name of only silent letters) would make unrelated names "sound alike".
    let primary = if primary.is_empty() {
        DoubleMetaphone::default().encode(s)
    } else {
        primary
    };
    (primary, alternate)
}

/// Puts (or removes) the invalid-NHS-number flag in `meta.tag` of a Patient about to be written,
/// so every reader of the record sees that its NHS number cannot be trusted.
pub fn flag_patient(patient: &mut Value) {
    let invalid = Demographics::from_patient(patient).nhs_invalid;
    let Some(object) = patient.as_object_mut() else {
        return;
    };
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    let Some(list) = tags.as_array_mut() else {
        return;
    };
    list.retain(|t| t["system"].as_str() != Some(FLAG_SYSTEM));
    if invalid {
        list.push(json!({
            "system": FLAG_SYSTEM,
            "code": FLAG_INVALID_NHS,
            "display": "NHS number fails the modulus-11 check; not used for matching"
        }));
    }
    if list.is_empty() {
        meta.remove("tag");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(nhs: &str, status: &str) -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [{
                "system": nhs_number::SYSTEM,
                "value": nhs,
                "extension": [{
                    "url": VERIFICATION_EXT,
                    "valueCodeableConcept": {"coding": [{"code": status}]}
                }]
            }],
            "name": [{"use": "official", "family": "O'Brien", "given": ["Zoë", "Ann"]}],
            "gender": "female",
            "birthDate": "1980-03-07",
            "address": [{"use": "home", "line": ["12, Mill  Lane"], "city": "Leeds", "postalCode": "ls1 4ab"}]
        })
    }

    #[test]
    fn verified_number_and_normalised_fields() {
        let d = Demographics::from_patient(&patient("943 476 5919", "01"));
        assert_eq!(d.nhs_number.as_deref(), Some("9434765919"));
        assert!(d.nhs_verified && !d.nhs_invalid);
        assert_eq!(d.family.as_deref(), Some("OBRIEN"));
        assert_eq!(d.given.as_deref(), Some("ZOE"));
        assert_eq!(d.postcode.as_deref(), Some("LS14AB"));
        assert_eq!(d.outward(), Some("LS1"));
        assert_eq!(d.address_line.as_deref(), Some("12 MILL LANE"));
        assert_eq!(d.town.as_deref(), Some("LEEDS"));
        assert_eq!(d.birth_year(), Some(1980));
    }

    #[test]
    fn the_second_address_line_is_kept_apart_and_only_when_there() {
        let mut p = patient("9434765919", "01");
        assert_eq!(Demographics::from_patient(&p).address_line2, None);
        let stored = serde_json::to_value(Demographics::from_patient(&p)).unwrap();
        assert!(stored.get("address_line2").is_none(), "{stored}");
        p["address"][0]["line"] = json!(["12 Mill Lane", "Rose  Cottage,", "Leeds"]);
        let d = Demographics::from_patient(&p);
        assert_eq!(d.address_line.as_deref(), Some("12 MILL LANE"));
        assert_eq!(d.address_line2.as_deref(), Some("ROSE COTTAGE"));
        // Rows written before the field was kept still read.
        let mut old = serde_json::to_value(&d).unwrap();
        old.as_object_mut().unwrap().remove("address_line2");
        let back: Demographics = serde_json::from_value(old).unwrap();
        assert_eq!(back.address_line2, None);
    }

    #[test]
    fn unverified_status_is_not_verified() {
        let d = Demographics::from_patient(&patient("9434765919", "02"));
        assert!(!d.nhs_verified);
        assert_eq!(d.nhs_number.as_deref(), Some("9434765919"));
    }

    #[test]
    fn invalid_number_is_flagged_and_never_kept() {
        let mut p = patient("9434765918", "01");
        let d = Demographics::from_patient(&p);
        assert!(d.nhs_invalid);
        assert_eq!(d.nhs_number, None);
        assert!(!d.nhs_verified);
        flag_patient(&mut p);
        assert_eq!(p["meta"]["tag"][0]["code"], FLAG_INVALID_NHS);
        // Correcting the number removes the flag.
        p["identifier"][0]["value"] = json!("9434765919");
        flag_patient(&mut p);
        assert!(p["meta"].get("tag").is_none());
    }

    #[test]
    fn blocking_keys_of_names_and_address_lines() {
        let mut d = Demographics::from_patient(&patient("9434765919", "01"));
        let mut swapped = d.clone();
        std::mem::swap(&mut swapped.family_code, &mut swapped.given_code);
        assert_eq!(d.name_key(), swapped.name_key());
        assert_eq!(d.line_key().as_deref(), Some("12|MIL|LS1"));
        for (line, key) in [
            ("FLAT 3", None),
            ("MILL COTTAGE", None),
            ("95", None),
            ("FLAT 3 12 MILL LANE", Some("3 12|MIL|LS1")),
            ("12A MILLER STREET", Some("12A|MIL|LS1")),
        ] {
            d.address_line = Some(line.into());
            assert_eq!(d.line_key().as_deref(), key, "{line}");
        }
        // Without a UK postcode the town stands for the locality; without either, no key.
        d.address_line = Some("3 CULLEN STREET".into());
        d.postcode = Some("3630".into());
        d.town = Some("NARELLAN VALE".into());
        assert_eq!(d.line_key().as_deref(), Some("3|CUL|NAR"));
        d.postcode = None;
        d.town = None;
        assert_eq!(d.line_key(), None);
    }

    #[test]
    fn name_place_keys_take_the_names_first_letters_and_the_district() {
        let mut d = Demographics::from_patient(&patient("9434765919", "01"));
        assert_eq!(d.name_place_key().as_deref(), Some("OBR|ZOE|LS1"));
        // Exchanged names, and typos after the third letter, keep the key.
        let mut other = d.clone();
        other.family = Some("ZOEY".into());
        other.given = Some("OBRAIN".into());
        assert_eq!(other.name_place_key(), d.name_place_key());
        d.postcode = Some("2767".into());
        assert_eq!(d.name_place_key().as_deref(), Some("OBR|ZOE|LEE"));
        // One name only: the other counts as empty.
        let mut one = d.clone();
        one.given = None;
        assert_eq!(one.name_place_key().as_deref(), Some("|OBR|LEE"));
        one.family = None;
        assert_eq!(one.name_place_key(), None);
        d.town = None;
        assert_eq!(d.name_place_key(), None);
    }

    #[test]
    fn an_address_line_splits_into_number_and_street() {
        for (line, number, street) in [
            ("12 MILL LANE", "12", "MILL LANE"),
            ("12A MILL LANE", "12A", "MILL LANE"),
            ("FLAT 3 12 MILL LANE", "3 12", "FLAT MILL LANE"),
            ("MILL COTTAGE", "", "MILL COTTAGE"),
            ("95", "95", ""),
        ] {
            assert_eq!(
                line_parts(line),
                (number.to_string(), street.to_string()),
                "{line}"
            );
        }
    }

    #[test]
    fn phonetic_codes_group_spelling_variants() {
        assert_eq!(double_metaphone("SMITH").0, double_metaphone("SMYTHE").0);
        assert_eq!(double_metaphone("PHILIP").0, double_metaphone("FILIP").0);
        assert_eq!(double_metaphone("KNIGHT").0, double_metaphone("NIGHT").0);
    }
}
