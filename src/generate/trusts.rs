//! Contributing organisations: NHS trusts and GP practices with their clinicians.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::bundle::{self, BundleBuilder, GMC, NMC, ODS, SDS_JOB_ROLE, SDS_ROLE_PROFILE, SDS_USER};
use super::data::DATA;
use super::rng::Dice;

/// The kind of organisation, which decides what care it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustKind {
    Acute,
    Community,
    MentalHealth,
    GpPractice,
}

impl TrustKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Acute => "acute",
            Self::Community => "community",
            Self::MentalHealth => "mental-health",
            Self::GpPractice => "gp",
        }
    }

    pub(crate) fn from_code(code: &str) -> Option<Self> {
        [
            Self::Acute,
            Self::Community,
            Self::MentalHealth,
            Self::GpPractice,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// Mix of kinds as K grows: an ICS has a few trusts and many practices.
const KIND_CYCLE: [TrustKind; 8] = [
    TrustKind::Acute,
    TrustKind::GpPractice,
    TrustKind::Community,
    TrustKind::MentalHealth,
    TrustKind::GpPractice,
    TrustKind::GpPractice,
    TrustKind::Acute,
    TrustKind::GpPractice,
];

const PLACES: [&str; 24] = [
    "Airedale Vale",
    "Calderbrook",
    "Northbridge",
    "Kirkmoor",
    "Wharfe Valley",
    "Ravensworth",
    "Elmstead",
    "Thornbury Cross",
    "Harrowfield",
    "Pennine Edge",
    "Brackendale",
    "Colne Bridge",
    "Aire and Calder",
    "Westholme",
    "Hollinsworth",
    "Ashby Moor",
    "Greystone",
    "Low Fold",
    "Marsden Heath",
    "Oakenshaw",
    "Ryburn",
    "Spenvale",
    "Holme Valley",
    "Kirkgate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Register {
    Gmc,
    Nmc,
}

pub(crate) struct Clinician {
    pub(crate) register: Register,
    pub(crate) number: String,
    pub(crate) sds_user_id: String,
    pub(crate) role_profile_id: String,
    pub(crate) given: &'static str,
    pub(crate) family: &'static str,
    pub(crate) female: bool,
}

impl Clinician {
    pub(crate) fn register_system(&self) -> &'static str {
        match self.register {
            Register::Gmc => GMC,
            Register::Nmc => NMC,
        }
    }

    pub(crate) fn is_doctor(&self) -> bool {
        self.register == Register::Gmc
    }

    pub(crate) fn reference(&self) -> Value {
        let mut r = bundle::reference(&bundle::conditional(
            "Practitioner",
            self.register_system(),
            &self.number,
        ));
        r["display"] = json!(self.display_name());
        r
    }

    pub(crate) fn display_name(&self) -> String {
        match self.register {
            Register::Gmc => format!("Dr {} {}", self.given, self.family),
            Register::Nmc => format!("{} {}", self.given, self.family),
        }
    }
}

pub(crate) struct Trust {
    pub(crate) ods: String,
    pub(crate) name: String,
    pub(crate) kind: TrustKind,
    /// First character of local patient identifiers, as PAS numbers often carry a site letter.
    pub(crate) mrn_prefix: char,
    pub(crate) town: &'static str,
    pub(crate) postcode: String,
    pub(crate) phone: String,
    pub(crate) clinicians: Vec<Clinician>,
}

impl Trust {
    /// Identifier system for this trust's local identifiers of one kind, e.g.
    /// `https://fhir.rx1.example.nhs.uk/Id/local-patient-identifier`.
    pub(crate) fn system(&self, what: &str) -> String {
        format!(
            "https://fhir.{}.example.nhs.uk/Id/{what}",
            self.ods.to_lowercase()
        )
    }

    pub(crate) fn reference(&self) -> Value {
        json!({
            "reference": bundle::conditional("Organization", ODS, &self.ods),
            "display": self.name,
        })
    }

    /// A reference that needs no resolution: used where the organisation may not be loaded.
    pub(crate) fn identifier_reference(&self) -> Value {
        json!({
            "type": "Organization",
            "identifier": bundle::identifier(ODS, &self.ods),
            "display": self.name,
        })
    }

    pub(crate) fn doctors(&self) -> impl Iterator<Item = &Clinician> {
        self.clinicians.iter().filter(|c| c.is_doctor())
    }

    pub(crate) fn nurses(&self) -> impl Iterator<Item = &Clinician> {
        self.clinicians.iter().filter(|c| !c.is_doctor())
    }
}

pub(crate) fn build_trusts(seed: u64, count: usize) -> Vec<Trust> {
    let mut dice = Dice::new(seed, 0);
    let mut used_codes = BTreeSet::new();
    let mut used_numbers = BTreeSet::new();
    let mut places: Vec<&'static str> = PLACES.to_vec();
    (0..count)
        .map(|i| {
            let kind = KIND_CYCLE[i % KIND_CYCLE.len()];
            let ods = loop {
                let code = match kind {
                    TrustKind::GpPractice => gp_code(&mut dice),
                    _ => trust_code(&mut dice),
                };
                if used_codes.insert(code.clone()) {
                    break code;
                }
            };
            let place = if places.is_empty() {
                *dice.pick(&PLACES)
            } else {
                places.remove(dice.index(places.len()))
            };
            let name = org_name(kind, place, &mut dice);
            let district = &DATA.districts[dice
                .weighted(&DATA.districts, |d| d.weight)
                .expect("districts")];
            let (doctors, nurses) = match kind {
                TrustKind::Acute => (8, 4),
                TrustKind::Community => (2, 6),
                TrustKind::MentalHealth => (4, 4),
                TrustKind::GpPractice => (4, 2),
            };
            let clinicians = (0..doctors + nurses)
                .map(|n| clinician(n < doctors, &mut dice, &mut used_numbers))
                .collect();
            Trust {
                mrn_prefix: (b'A' + (i % 26) as u8) as char,
                ods,
                name,
                kind,
                town: district.town,
                postcode: postcode(district.code, &mut dice),
                phone: format!("0113 496 {:04}", dice.below(1000)),
                clinicians,
            }
        })
        .collect()
}

/// Three characters as NHS trust codes have (`RX1`, `RAE`); synthetic, not looked up.
fn trust_code(dice: &mut Dice) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHJKLMNPQRTVWXY0123456789";
    format!(
        "R{}{}",
        *dice.pick(&ALNUM[..21]) as char,
        *dice.pick(ALNUM) as char
    )
}

/// GP practice codes: region letter then five digits (`B86012`).
fn gp_code(dice: &mut Dice) -> String {
    const REGION: &[u8] = b"ABCDEFGHJKLMNPY";
    format!(
        "{}{}{:03}",
        *dice.pick(REGION) as char,
        dice.between(81, 92),
        dice.between(1, 120)
    )
}

fn org_name(kind: TrustKind, place: &str, dice: &mut Dice) -> String {
    match kind {
        TrustKind::Acute => format!(
            "{place} {} NHS {}Trust",
            dice.pick(&["Hospitals", "Teaching Hospitals", "University Hospitals"]),
            if dice.chance(0.7) { "Foundation " } else { "" }
        ),
        TrustKind::Community => format!("{place} Community Health Services NHS Trust"),
        TrustKind::MentalHealth => format!(
            "{place} {} NHS Foundation Trust",
            dice.pick(&[
                "Mental Health",
                "Care Partnership",
                "Health and Care Partnership"
            ])
        ),
        TrustKind::GpPractice => format!(
            "{place} {}",
            dice.pick(&[
                "Medical Centre",
                "Surgery",
                "Health Centre",
                "Medical Practice"
            ])
        ),
    }
}

pub(crate) fn postcode(district: &str, dice: &mut Dice) -> String {
    // Inward-code letters never use C, I, K, M, O or V.
    const UNIT: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";
    format!(
        "{district} {}{}{}",
        dice.below(10),
        *dice.pick(UNIT) as char,
        *dice.pick(UNIT) as char
    )
}

fn clinician(doctor: bool, dice: &mut Dice, used: &mut BTreeSet<String>) -> Clinician {
    let female = dice.chance(if doctor { 0.5 } else { 0.85 });
    let given = if female {
        *dice.pick(&DATA.given_female)
    } else {
        *dice.pick(&DATA.given_male)
    };
    let family = *dice.pick(&DATA.family);
    let mut fresh = |make: &mut dyn FnMut(&mut Dice) -> String| loop {
        let v = make(dice);
        if used.insert(v.clone()) {
            break v;
        }
    };
    let number = if doctor {
        fresh(&mut |d| format!("{}", d.between(2_000_000, 7_999_999)))
    } else {
        // NMC PIN: year, month letter, four digits, country letter.
        fresh(&mut |d| {
            format!(
                "{:02}{}{:04}{}",
                d.between(0, 99),
                (b'A' + d.below(12) as u8) as char,
                d.below(10_000),
                *d.pick(&['E', 'E', 'E', 'E', 'S', 'W', 'N', 'O'])
            )
        })
    };
    let sds_user_id = fresh(&mut |d| format!("{}", d.between(100_000_000_000, 999_999_999_999)));
    let role_profile_id =
        fresh(&mut |d| format!("{}", d.between(100_000_000_000, 999_999_999_999)));
    Clinician {
        register: if doctor { Register::Gmc } else { Register::Nmc },
        number,
        sds_user_id,
        role_profile_id,
        given,
        family,
        female,
    }
}

/// The first bundle for a trust: its Organization, Practitioners and PractitionerRoles.
pub(crate) fn organisation_bundle(trust: &Trust, dice: &mut Dice) -> BundleBuilder {
    let mut b = BundleBuilder::default();
    let org_url = bundle::urn(dice.uuid());
    b.add(
        &org_url,
        json!({
            "resourceType": "Organization",
            "meta": bundle::meta("Organization"),
            "identifier": [bundle::identifier(ODS, &trust.ods)],
            "active": true,
            "type": [bundle::concept(
                "http://terminology.hl7.org/CodeSystem/organization-type",
                "prov",
                "Healthcare Provider",
            )],
            "name": trust.name,
            "telecom": [{ "system": "phone", "value": trust.phone, "use": "work" }],
            "address": [{
                "use": "work",
                "line": [format!("{} House", trust.name.split(' ').next().unwrap_or("Main"))],
                "city": trust.town,
                "postalCode": trust.postcode,
                "country": "GB",
            }],
        }),
        ODS,
        &trust.ods,
    );
    for c in &trust.clinicians {
        let url = bundle::urn(dice.uuid());
        let mut name = json!({ "use": "official", "family": c.family, "given": [c.given] });
        if c.is_doctor() {
            name["prefix"] = json!(["Dr"]);
        }
        b.add(
            &url,
            json!({
                "resourceType": "Practitioner",
                "meta": bundle::meta("Practitioner"),
                "identifier": [
                    bundle::identifier(c.register_system(), &c.number),
                    bundle::identifier(SDS_USER, &c.sds_user_id),
                ],
                "active": true,
                "name": [name],
                "gender": if c.female { "female" } else { "male" },
            }),
            c.register_system(),
            &c.number,
        );
        let (role_code, role_display) = if c.is_doctor() {
            ("R8000", "Clinical Practitioner Access Role")
        } else {
            ("R8001", "Nurse Access Role")
        };
        b.add(
            &bundle::urn(dice.uuid()),
            json!({
                "resourceType": "PractitionerRole",
                "meta": bundle::meta("PractitionerRole"),
                "identifier": [bundle::identifier(SDS_ROLE_PROFILE, &c.role_profile_id)],
                "active": true,
                "practitioner": { "reference": url, "display": c.display_name() },
                "organization": { "reference": org_url, "display": trust.name },
                "code": [bundle::concept(SDS_JOB_ROLE, role_code, role_display)],
            }),
            SDS_ROLE_PROFILE,
            &c.role_profile_id,
        );
    }
    b
}
