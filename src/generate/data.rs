//! Reference lists the generator draws from, kept as text files under `data/` so that a
//! clinician or analyst can review and extend them without reading Rust.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::TrustKind;

pub(crate) struct Data {
    pub(crate) given_male: Vec<&'static str>,
    pub(crate) given_female: Vec<&'static str>,
    pub(crate) family: Vec<&'static str>,
    pub(crate) nicknames: BTreeMap<&'static str, Vec<&'static str>>,
    pub(crate) districts: Vec<District>,
    pub(crate) streets: Vec<&'static str>,
    pub(crate) conditions: Vec<ConditionDef>,
    pub(crate) medications: Vec<MedicationDef>,
    pub(crate) observations: Vec<ObservationDef>,
    pub(crate) allergies: Vec<AllergyDef>,
}

pub(crate) struct District {
    pub(crate) code: &'static str,
    pub(crate) town: &'static str,
    pub(crate) weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SexFilter {
    Any,
    Female,
    Male,
}

pub(crate) struct ConditionDef {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
    pub(crate) settings: Vec<TrustKind>,
    pub(crate) chronic: bool,
    pub(crate) sensitivity: Option<&'static str>,
    pub(crate) weight: f64,
    pub(crate) min_age: u32,
    pub(crate) sex: SexFilter,
    pub(crate) medications: Vec<&'static str>,
    pub(crate) observations: Vec<&'static str>,
}

impl ConditionDef {
    pub(crate) fn recorded_by(&self, kind: TrustKind) -> bool {
        self.settings.contains(&kind)
    }

    pub(crate) fn fits(&self, age: u32, female: bool) -> bool {
        age >= self.min_age
            && match self.sex {
                SexFilter::Any => true,
                SexFilter::Female => female,
                SexFilter::Male => !female,
            }
    }
}

pub(crate) struct MedicationDef {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
    pub(crate) dosage: &'static str,
    pub(crate) continuous: bool,
}

pub(crate) struct ObservationDef {
    pub(crate) key: &'static str,
    pub(crate) category: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) low: f64,
    pub(crate) high: f64,
    pub(crate) decimals: u32,
    /// (system URI, code, display)
    pub(crate) codings: Vec<(&'static str, &'static str, &'static str)>,
}

pub(crate) struct AllergyDef {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
    pub(crate) category: &'static str,
    pub(crate) criticality: &'static str,
    pub(crate) weight: f64,
}

pub(crate) static DATA: LazyLock<Data> = LazyLock::new(Data::load);

/// Non-empty, non-comment lines.
fn lines(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
}

fn fields(line: &'static str, n: usize, file: &str) -> Vec<&'static str> {
    let f: Vec<&'static str> = line.split('\t').collect();
    assert_eq!(
        f.len(),
        n,
        "{file}: expected {n} tab-separated fields in {line:?}"
    );
    f
}

fn list(field: &'static str) -> Vec<&'static str> {
    if field == "-" {
        Vec::new()
    } else {
        field.split(',').map(str::trim).collect()
    }
}

fn number(field: &str, file: &str) -> f64 {
    field
        .parse()
        .unwrap_or_else(|_| panic!("{file}: not a number: {field:?}"))
}

impl Data {
    fn load() -> Self {
        let nicknames = lines(include_str!("data/nicknames.txt"))
            .map(|l| {
                let f = fields(l, 2, "nicknames.txt");
                (f[0], list(f[1]))
            })
            .collect();
        let districts = lines(include_str!("data/postcode_districts.tsv"))
            .map(|l| {
                let f = fields(l, 3, "postcode_districts.tsv");
                District {
                    code: f[0],
                    town: f[1],
                    weight: number(f[2], "postcode_districts.tsv"),
                }
            })
            .collect();
        let conditions = lines(include_str!("data/conditions.tsv"))
            .map(|l| {
                let f = fields(l, 10, "conditions.tsv");
                ConditionDef {
                    code: f[0],
                    display: f[1],
                    settings: list(f[2])
                        .into_iter()
                        .map(|k| {
                            TrustKind::from_code(k)
                                .unwrap_or_else(|| panic!("conditions.tsv: unknown setting {k}"))
                        })
                        .collect(),
                    chronic: match f[3] {
                        "chronic" => true,
                        "episode" => false,
                        other => panic!("conditions.tsv: unknown course {other}"),
                    },
                    sensitivity: (f[4] != "-").then_some(f[4]),
                    weight: number(f[5], "conditions.tsv"),
                    min_age: number(f[6], "conditions.tsv") as u32,
                    sex: match f[7] {
                        "any" => SexFilter::Any,
                        "female" => SexFilter::Female,
                        "male" => SexFilter::Male,
                        other => panic!("conditions.tsv: unknown sex filter {other}"),
                    },
                    medications: list(f[8]),
                    observations: list(f[9]),
                }
            })
            .collect();
        let medications = lines(include_str!("data/medications.tsv"))
            .map(|l| {
                let f = fields(l, 4, "medications.tsv");
                MedicationDef {
                    code: f[0],
                    display: f[1],
                    dosage: f[2],
                    continuous: f[3] == "continuous",
                }
            })
            .collect();
        let observations = lines(include_str!("data/observations.tsv"))
            .map(|l| {
                let f = fields(l, 7, "observations.tsv");
                ObservationDef {
                    key: f[0],
                    category: f[1],
                    unit: f[2],
                    low: number(f[3], "observations.tsv"),
                    high: number(f[4], "observations.tsv"),
                    decimals: number(f[5], "observations.tsv") as u32,
                    codings: f[6]
                        .split('|')
                        .map(|c| {
                            let mut parts = c.splitn(3, ':');
                            let system = match parts.next() {
                                Some("loinc") => super::bundle::LOINC,
                                Some("sct") => super::bundle::SNOMED,
                                other => panic!("observations.tsv: unknown system {other:?}"),
                            };
                            let code = parts.next().expect("code");
                            let display = parts.next().expect("display");
                            (system, code, display)
                        })
                        .collect(),
                }
            })
            .collect();
        let allergies = lines(include_str!("data/allergies.tsv"))
            .map(|l| {
                let f = fields(l, 5, "allergies.tsv");
                AllergyDef {
                    code: f[0],
                    display: f[1],
                    category: f[2],
                    criticality: f[3],
                    weight: number(f[4], "allergies.tsv"),
                }
            })
            .collect();
        Self {
            given_male: lines(include_str!("data/given_male.txt")).collect(),
            given_female: lines(include_str!("data/given_female.txt")).collect(),
            family: lines(include_str!("data/family.txt")).collect(),
            nicknames,
            districts,
            streets: lines(include_str!("data/streets.txt")).collect(),
            conditions,
            medications,
            observations,
            allergies,
        }
    }

    pub(crate) fn medication(&self, code: &str) -> &MedicationDef {
        self.medications
            .iter()
            .find(|m| m.code == code)
            .unwrap_or_else(|| panic!("medication {code} is not in medications.tsv"))
    }

    pub(crate) fn observation(&self, key: &str) -> &ObservationDef {
        self.observations
            .iter()
            .find(|o| o.key == key)
            .unwrap_or_else(|| panic!("observation {key} is not in observations.tsv"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_big_enough_to_look_like_a_population() {
        let d = &*DATA;
        assert!(d.given_male.len() >= 100);
        assert!(d.given_female.len() >= 100);
        assert!(d.family.len() >= 200);
        assert!(d.districts.len() >= 50);
        assert!(d.streets.len() >= 50);
    }

    #[test]
    fn every_medication_and_observation_a_condition_names_exists() {
        let d = &*DATA;
        for c in &d.conditions {
            for m in &c.medications {
                d.medication(m);
            }
            for o in &c.observations {
                d.observation(o);
            }
            assert!(!c.settings.is_empty(), "{}", c.code);
        }
        for key in [
            "hr", "rr", "temp", "spo2", "weight", "height", "bmi", "hb", "wbc", "crp",
        ] {
            d.observation(key);
        }
    }

    #[test]
    fn codes_are_digits_and_displays_are_present() {
        let d = &*DATA;
        let sct = d
            .conditions
            .iter()
            .map(|c| (c.code, c.display))
            .chain(d.medications.iter().map(|m| (m.code, m.display)))
            .chain(d.allergies.iter().map(|a| (a.code, a.display)));
        for (code, display) in sct {
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
            assert!(!display.is_empty(), "{code}");
        }
    }

    #[test]
    fn nicknames_belong_to_listed_given_names() {
        let d = &*DATA;
        for formal in d.nicknames.keys() {
            assert!(
                d.given_male.contains(formal) || d.given_female.contains(formal),
                "{formal}"
            );
        }
    }
}
