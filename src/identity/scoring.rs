//! Fellegi–Sunter scoring of a pair of Patients: each comparison lands on one agreement level
//! whose weight is log2(m/u); the sum is the pair's score (log2 likelihood ratio), and two
//! thresholds turn it into MATCH, POSSIBLE_MATCH or NO_MATCH. The m/u probabilities and the
//! thresholds are data (`identity/matching.toml`), not code.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use serde::{Deserialize, Serialize};
use strsim::jaro_winkler;

use super::demographics::Demographics;

const BUILT_IN: &str = include_str!("../../identity/matching.toml");
const NICKNAMES: &str = include_str!("../../identity/nicknames.txt");

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Level {
    pub m: f64,
    pub u: f64,
}

impl Level {
    pub fn weight(&self) -> f64 {
        (self.m / self.u).log2()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Thresholds {
    #[serde(rename = "match")]
    pub match_: f64,
    pub possible: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgreeDisagree {
    pub agree: Level,
    pub disagree: Level,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FamilyLevels {
    pub exact: Level,
    pub similar: Level,
    pub phonetic: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GivenLevels {
    pub exact: Level,
    pub nickname: Level,
    pub similar: Level,
    pub phonetic: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BirthLevels {
    pub exact: Level,
    pub swapped_day_month: Level,
    pub one_digit: Level,
    pub disagree: Level,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddressLevels {
    pub full: Level,
    pub postcode: Level,
    pub outward: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Safety {
    /// A pair whose given names disagree (not equal, nickname, similar or phonetic) is at most
    /// POSSIBLE_MATCH: twins.
    pub given_disagree_caps_at_possible: bool,
}

/// The whole matching configuration, as in `identity/matching.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct MatchConfig {
    pub thresholds: Thresholds,
    pub safety: Safety,
    pub nhs_number: AgreeDisagree,
    pub family: FamilyLevels,
    pub given: GivenLevels,
    pub birth_date: BirthLevels,
    pub sex: AgreeDisagree,
    pub address: AddressLevels,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("identity matching configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("identity matching configuration: {0}")]
    Invalid(String),
}

impl MatchConfig {
    pub fn parse(text: &str) -> Result<MatchConfig, ConfigError> {
        let config: MatchConfig = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    pub fn built_in() -> MatchConfig {
        MatchConfig::parse(BUILT_IN).expect("the built-in identity/matching.toml is valid")
    }

    fn levels(&self) -> Vec<(&'static str, Level)> {
        vec![
            ("nhs_number.agree", self.nhs_number.agree),
            ("nhs_number.disagree", self.nhs_number.disagree),
            ("family.exact", self.family.exact),
            ("family.similar", self.family.similar),
            ("family.phonetic", self.family.phonetic),
            ("family.disagree", self.family.disagree),
            ("given.exact", self.given.exact),
            ("given.nickname", self.given.nickname),
            ("given.similar", self.given.similar),
            ("given.phonetic", self.given.phonetic),
            ("given.disagree", self.given.disagree),
            ("birth_date.exact", self.birth_date.exact),
            (
                "birth_date.swapped_day_month",
                self.birth_date.swapped_day_month,
            ),
            ("birth_date.one_digit", self.birth_date.one_digit),
            ("birth_date.disagree", self.birth_date.disagree),
            ("sex.agree", self.sex.agree),
            ("sex.disagree", self.sex.disagree),
            ("address.full", self.address.full),
            ("address.postcode", self.address.postcode),
            ("address.outward", self.address.outward),
            ("address.disagree", self.address.disagree),
        ]
    }

    /// Probabilities in (0, 1] and thresholds in order: a typo here must stop start-up, not
    /// silently link strangers.
    fn check(&self) -> Result<(), ConfigError> {
        for (name, l) in self.levels() {
            if !(l.m > 0.0 && l.m <= 1.0 && l.u > 0.0 && l.u <= 1.0) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: m and u must be probabilities in (0, 1]"
                )));
            }
        }
        if self.thresholds.possible >= self.thresholds.match_ {
            return Err(ConfigError::Invalid(
                "thresholds.possible must be below thresholds.match".into(),
            ));
        }
        Ok(())
    }
}

static CONFIG: OnceLock<MatchConfig> = OnceLock::new();

/// Reads and checks the configured matching file (or takes the built-in one) and installs it;
/// called once at start-up so a bad file stops the process before any record is linked.
pub fn install_from(path: Option<&std::path::Path>) -> Result<(), ConfigError> {
    let config = match path {
        Some(p) => MatchConfig::parse(
            &std::fs::read_to_string(p)
                .map_err(|e| ConfigError::Invalid(format!("cannot read {}: {e}", p.display())))?,
        )?,
        None => MatchConfig::built_in(),
    };
    install(config);
    Ok(())
}

/// Installs the configuration read at start-up; the first call wins.
pub fn install(config: MatchConfig) {
    let _ = CONFIG.set(config);
}

pub fn config() -> &'static MatchConfig {
    CONFIG.get_or_init(MatchConfig::built_in)
}

/// Formal given name → its nicknames and back, from `identity/nicknames.txt`.
static NICKNAME_GROUPS: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for line in NICKNAMES.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((formal, shorts)) = line.split_once('\t') else {
            continue;
        };
        let formal = super::demographics::normalise_name(formal);
        for short in shorts.split(',') {
            let short = super::demographics::normalise_name(short);
            groups
                .entry(formal.clone())
                .or_default()
                .push(short.clone());
            groups.entry(short).or_default().push(formal.clone());
        }
    }
    groups
});

fn nicknames(a: &str, b: &str) -> bool {
    NICKNAME_GROUPS
        .get(a)
        .is_some_and(|g| g.iter().any(|x| x == b))
}

/// Match grade, as FHIR's match-grade extension names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grade {
    /// Deterministic: the same verified NHS number.
    Certain,
    /// Score at or above the match threshold.
    Probable,
    /// Between the thresholds: a person must decide.
    Possible,
    CertainlyNot,
}

impl Grade {
    pub fn code(self) -> &'static str {
        match self {
            Grade::Certain => "certain",
            Grade::Probable => "probable",
            Grade::Possible => "possible",
            Grade::CertainlyNot => "certainly-not",
        }
    }
}

/// The scored comparison of two records.
#[derive(Debug, Clone, Serialize)]
pub struct PairScore {
    pub score: f64,
    pub grade: Grade,
    /// Both carry verified NHS numbers and they differ: never linked automatically.
    pub conflict: bool,
    /// Agreement level per comparison, for reviewers ("family.exact", …).
    pub levels: Vec<&'static str>,
}

/// Score used for a deterministic (verified NHS number) link; above any probabilistic score.
pub const CERTAIN_SCORE: f64 = 100.0;

pub fn compare(a: &Demographics, b: &Demographics) -> PairScore {
    compare_with(config(), a, b)
}

pub fn compare_with(c: &MatchConfig, a: &Demographics, b: &Demographics) -> PairScore {
    let both_verified = a.nhs_verified && b.nhs_verified;
    if both_verified && a.nhs_number.is_some() && a.nhs_number == b.nhs_number {
        return PairScore {
            score: CERTAIN_SCORE,
            grade: Grade::Certain,
            conflict: false,
            levels: vec!["nhs_number.verified"],
        };
    }
    let conflict = both_verified && a.nhs_number != b.nhs_number;
    let mut levels = Vec::new();
    let mut score = 0.0;
    let mut add = |name: &'static str, l: Level| {
        levels.push(name);
        score += l.weight();
    };

    if let (Some(x), Some(y)) = (&a.nhs_number, &b.nhs_number) {
        if x == y {
            add("nhs_number.agree", c.nhs_number.agree);
        } else {
            add("nhs_number.disagree", c.nhs_number.disagree);
        }
    }
    if let (Some(x), Some(y)) = (&a.family, &b.family) {
        let f = &c.family;
        if x == y {
            add("family.exact", f.exact);
        } else if jaro_winkler(x, y) >= f.similar_at {
            add("family.similar", f.similar);
        } else if sounds_alike(a, b) {
            add("family.phonetic", f.phonetic);
        } else {
            add("family.disagree", f.disagree);
        }
    }
    if let (Some(x), Some(y)) = (&a.given, &b.given) {
        let g = &c.given;
        if x == y {
            add("given.exact", g.exact);
        } else if nicknames(x, y) {
            add("given.nickname", g.nickname);
        } else if jaro_winkler(x, y) >= g.similar_at {
            add("given.similar", g.similar);
        } else if a.given_code.is_some() && a.given_code == b.given_code {
            add("given.phonetic", g.phonetic);
        } else {
            add("given.disagree", g.disagree);
        }
    }
    if let (Some(x), Some(y)) = (&a.birth_date, &b.birth_date) {
        let bd = &c.birth_date;
        if x == y {
            add("birth_date.exact", bd.exact);
        } else if swapped_day_month(x, y) {
            add("birth_date.swapped_day_month", bd.swapped_day_month);
        } else if one_digit_apart(x, y) {
            add("birth_date.one_digit", bd.one_digit);
        } else {
            add("birth_date.disagree", bd.disagree);
        }
    }
    if let (Some(x), Some(y)) = (&a.sex, &b.sex) {
        if x == y {
            add("sex.agree", c.sex.agree);
        } else {
            add("sex.disagree", c.sex.disagree);
        }
    }
    if let (Some(x), Some(y)) = (&a.postcode, &b.postcode) {
        let ad = &c.address;
        if x == y {
            let lines_agree = match (&a.address_line, &b.address_line) {
                (Some(l), Some(m)) => jaro_winkler(l, m) >= ad.similar_at,
                // Same postcode and no line to contradict it.
                _ => true,
            };
            if lines_agree {
                add("address.full", ad.full);
            } else {
                add("address.postcode", ad.postcode);
            }
        } else if a.outward().is_some() && a.outward() == b.outward() {
            add("address.outward", ad.outward);
        } else {
            add("address.disagree", ad.disagree);
        }
    }

    let grade = if conflict {
        // Two traced NHS numbers say these are two people. Only when everything else says they
        // are one (a number issued twice, or keyed against the wrong person) may a person look.
        if score >= c.thresholds.match_ {
            Grade::Possible
        } else {
            Grade::CertainlyNot
        }
    } else if score >= c.thresholds.match_
        && !(c.safety.given_disagree_caps_at_possible && levels.contains(&"given.disagree"))
    {
        Grade::Probable
    } else if score >= c.thresholds.possible {
        Grade::Possible
    } else {
        Grade::CertainlyNot
    };
    PairScore {
        score,
        grade,
        conflict,
        levels,
    }
}

fn sounds_alike(a: &Demographics, b: &Demographics) -> bool {
    let codes_a = [&a.family_code, &a.family_alt];
    let codes_b = [&b.family_code, &b.family_alt];
    codes_a.iter().any(|x| {
        x.as_ref()
            .is_some_and(|x| !x.is_empty() && codes_b.iter().any(|y| y.as_deref() == Some(x)))
    })
}

/// `1980-03-07` against `1980-07-03`.
fn swapped_day_month(x: &str, y: &str) -> bool {
    x.len() == 10 && y.len() == 10 && x[..4] == y[..4] && x[5..7] == y[8..10] && x[8..10] == y[5..7]
}

/// Exactly one digit differs (a keying slip in one position).
fn one_digit_apart(x: &str, y: &str) -> bool {
    x.len() == y.len() && x.bytes().zip(y.bytes()).filter(|(p, q)| p != q).count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> Demographics {
        let mut d = Demographics {
            family: Some("SMITH".into()),
            given: Some("WILLIAM".into()),
            birth_date: Some("1980-03-07".into()),
            sex: Some("male".into()),
            postcode: Some("LS14AB".into()),
            address_line: Some("12 MILL LANE".into()),
            ..Default::default()
        };
        refresh_codes(&mut d);
        d
    }

    fn refresh_codes(d: &mut Demographics) {
        let (p, a) = super::super::demographics::double_metaphone(d.family.as_deref().unwrap());
        d.family_code = Some(p);
        d.family_alt = Some(a);
        d.given_code = d
            .given
            .as_deref()
            .map(|g| super::super::demographics::double_metaphone(g).0);
    }

    #[test]
    fn built_in_configuration_is_valid() {
        let c = MatchConfig::built_in();
        assert!(c.thresholds.match_ > c.thresholds.possible);
        assert!(c.family.exact.weight() > 0.0 && c.family.disagree.weight() < 0.0);
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let bad = BUILT_IN.replace("match = 24.0", "match = 1.0");
        assert!(MatchConfig::parse(&bad).is_err());
        let bad = BUILT_IN.replace("m = 0.88", "m = 1.88");
        assert!(MatchConfig::parse(&bad).is_err());
    }

    #[test]
    fn equal_verified_nhs_numbers_are_certain() {
        let mut a = person();
        let mut b = Demographics::default();
        for d in [&mut a, &mut b] {
            d.nhs_number = Some("9434765919".into());
            d.nhs_verified = true;
        }
        let s = compare(&a, &b);
        assert_eq!(s.grade, Grade::Certain);
    }

    #[test]
    fn identical_demographics_match() {
        let s = compare(&person(), &person());
        assert_eq!(s.grade, Grade::Probable, "{s:?}");
    }

    #[test]
    fn moved_house_with_a_nickname_still_matches() {
        let mut b = person();
        b.given = Some("BILL".into());
        b.postcode = Some("BD74XY".into());
        b.address_line = Some("3 HIGH STREET".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert_eq!(s.grade, Grade::Probable, "{s:?}");
    }

    #[test]
    fn swapped_day_and_month_is_partial_agreement() {
        let mut b = person();
        b.birth_date = Some("1980-07-03".into());
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"birth_date.swapped_day_month"));
        assert!(s.grade == Grade::Probable || s.grade == Grade::Possible);
    }

    #[test]
    fn one_digit_typo_in_birth_date_is_partial_agreement() {
        let mut b = person();
        b.birth_date = Some("1981-03-07".into());
        assert!(
            compare(&person(), &b)
                .levels
                .contains(&"birth_date.one_digit")
        );
    }

    #[test]
    fn household_members_are_not_matched() {
        // Same surname and address, different first name, sex and birth date: a spouse.
        let mut b = person();
        b.given = Some("MARGARET".into());
        b.sex = Some("female".into());
        b.birth_date = Some("1982-11-23".into());
        refresh_codes(&mut b);
        assert_eq!(compare(&person(), &b).grade, Grade::CertainlyNot);
    }

    #[test]
    fn twins_are_never_linked_automatically() {
        // Same surname, birth date, sex and address; different first names.
        let mut b = person();
        b.given = Some("EDWARD".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.score >= config().thresholds.match_, "{s:?}");
        assert_eq!(s.grade, Grade::Possible);
    }

    #[test]
    fn different_verified_nhs_numbers_never_link() {
        let mut a = person();
        let mut b = person();
        a.nhs_number = Some("9434765919".into());
        b.nhs_number = Some("9434765870".into());
        a.nhs_verified = true;
        b.nhs_verified = true;
        let s = compare(&a, &b);
        assert!(s.conflict);
        assert_ne!(s.grade, Grade::Probable);
        assert_ne!(s.grade, Grade::Certain);
    }

    #[test]
    fn family_name_typo_is_similar() {
        let mut b = person();
        b.family = Some("SMIHT".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"family.similar"), "{s:?}");
    }
}
