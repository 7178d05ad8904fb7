//! Fellegi–Sunter scoring of a pair of Patients: each comparison lands on one agreement level
//! whose weight is log2(m/u); the sum is the pair's score (log2 likelihood ratio), and two
//! thresholds turn it into MATCH, POSSIBLE_MATCH or NO_MATCH. The m/u probabilities and the
//! thresholds are data (`identity/matching.toml`), not code.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, OnceLock};

use serde::{Deserialize, Serialize};
use strsim::jaro_winkler;

use super::demographics::{Demographics, line_parts};

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
    pub close: Level,
    /// Family and given name exchanged (`SMITH JOHN` against `JOHN SMITH`).
    pub swapped: Level,
    /// One record's family name is the other's given name but the remaining two names differ
    /// (`SMITH JOHN` against `JON SMITH` with a typo, or against a twin `JANE SMITH` whose names
    /// were exchanged): the remaining pair is compared as the given names.
    pub crossed: Level,
    pub disagree: Level,
    pub similar_at: f64,
    pub close_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GivenLevels {
    pub exact: Level,
    pub nickname: Level,
    pub similar: Level,
    pub phonetic: Level,
    pub close: Level,
    pub disagree: Level,
    pub similar_at: f64,
    pub close_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BirthLevels {
    pub exact: Level,
    pub swapped_day_month: Level,
    pub one_digit: Level,
    pub two_digits: Level,
    pub disagree: Level,
}

/// How the address is scored: as one comparison (`whole`, the default: a shared household
/// address cannot outweigh different names) or as four independent comparisons of its parts
/// (`parts`: postcode, town, house number, street), which suits data whose fields are
/// corrupted independently of each other and whose people do not share homes (FEBRL), as
/// Splink's FEBRL model compares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressCompare {
    #[default]
    Whole,
    Parts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddressLevels {
    /// Whole (the levels below) or parts (`[postcode]`, `[town]`, `[house]`, `[street]`).
    #[serde(default)]
    pub compare: AddressCompare,
    pub full: Level,
    pub street: Level,
    pub postcode: Level,
    pub line: Level,
    pub near: Level,
    pub outward: Level,
    pub town: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

/// The address's parts, scored only with `address.compare = "parts"`.
#[derive(Debug, Clone, Deserialize)]
pub struct PostcodeLevels {
    pub exact: Level,
    /// One keying slip apart (`4223`/`4233`, `LS14AB`/`LS14BA`).
    pub near: Level,
    /// Same outward code (UK postcodes only).
    pub outward: Level,
    pub disagree: Level,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TownLevels {
    pub exact: Level,
    pub similar: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

/// The house number (`demographics::line_parts`), compared where both lines have one.
#[derive(Debug, Clone, Deserialize)]
pub struct HouseLevels {
    pub exact: Level,
    /// One keying slip apart (`12`/`21`, `12`/`13`).
    pub near: Level,
    pub disagree: Level,
}

/// The street of the first line without its number, compared where both lines have one.
#[derive(Debug, Clone, Deserialize)]
pub struct StreetLevels {
    pub exact: Level,
    pub similar: Level,
    /// The streets differ, but one record's street is (similar to) the other's second line:
    /// the two lines were written the other way round (`25 ROSEBERY HILL` / `ASHCROFT
    /// CRESCENT` against `25 ASHCROFT CRESCENT` / `ROSEBERY HILL`). The names left over are
    /// then compared as the second lines.
    pub crossed: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

/// The address's second line (a building, an estate, a locality), compared where both records
/// have one, or the lines left over when the first lines crossed (`street.crossed`).
#[derive(Debug, Clone, Deserialize)]
pub struct SecondLineLevels {
    pub exact: Level,
    pub similar: Level,
    pub disagree: Level,
    pub similar_at: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Safety {
    /// Twins: a pair whose given names are not the same name (not equal, a nickname, similar or
    /// phonetically equal) while family name and birth date agree is at most POSSIBLE_MATCH.
    pub twins_cap_at_possible: bool,
}

/// Term frequencies, as Splink's term-frequency adjustment uses them: the share of records
/// carrying a name, for the names common enough that two records agreeing on one are weaker
/// evidence than the exact level's average (its u, the chance that two different people share
/// a name). Estimated from the records by `shcr identity-estimate`; the built-in file has none.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Frequencies {
    #[serde(default)]
    pub family: BTreeMap<String, f64>,
    #[serde(default)]
    pub given: BTreeMap<String, f64>,
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
    pub postcode: PostcodeLevels,
    pub town: TownLevels,
    pub house: HouseLevels,
    pub street: StreetLevels,
    pub second_line: SecondLineLevels,
    #[serde(default)]
    pub frequencies: Frequencies,
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
        let mut table: toml::Table = toml::from_str(text)?;
        fill_later_levels(&mut table);
        let config: MatchConfig = toml::Value::Table(table).try_into()?;
        config.check()?;
        Ok(config)
    }

    pub fn built_in() -> MatchConfig {
        MatchConfig::parse(BUILT_IN).expect("the built-in identity/matching.toml is valid")
    }

    /// Every level's name (`comparison.level`), in the file's order.
    pub const LEVELS: &'static [&'static str] = &[
        "nhs_number.agree",
        "nhs_number.disagree",
        "family.exact",
        "family.similar",
        "family.phonetic",
        "family.swapped",
        "family.crossed",
        "family.close",
        "family.disagree",
        "given.exact",
        "given.nickname",
        "given.similar",
        "given.phonetic",
        "given.close",
        "given.disagree",
        "birth_date.exact",
        "birth_date.swapped_day_month",
        "birth_date.one_digit",
        "birth_date.two_digits",
        "birth_date.disagree",
        "sex.agree",
        "sex.disagree",
        "address.full",
        "address.street",
        "address.postcode",
        "address.line",
        "address.near",
        "address.outward",
        "address.town",
        "address.disagree",
        "postcode.exact",
        "postcode.near",
        "postcode.outward",
        "postcode.disagree",
        "town.exact",
        "town.similar",
        "town.disagree",
        "house.exact",
        "house.near",
        "house.disagree",
        "street.exact",
        "street.similar",
        "street.crossed",
        "street.disagree",
        "second_line.exact",
        "second_line.similar",
        "second_line.disagree",
    ];

    /// The m/u probabilities of a level by name (the estimator writes them).
    pub fn level_mut(&mut self, name: &str) -> Option<&mut Level> {
        Some(match name {
            "nhs_number.agree" => &mut self.nhs_number.agree,
            "nhs_number.disagree" => &mut self.nhs_number.disagree,
            "family.exact" => &mut self.family.exact,
            "family.similar" => &mut self.family.similar,
            "family.phonetic" => &mut self.family.phonetic,
            "family.close" => &mut self.family.close,
            "family.swapped" => &mut self.family.swapped,
            "family.crossed" => &mut self.family.crossed,
            "family.disagree" => &mut self.family.disagree,
            "given.exact" => &mut self.given.exact,
            "given.nickname" => &mut self.given.nickname,
            "given.similar" => &mut self.given.similar,
            "given.phonetic" => &mut self.given.phonetic,
            "given.close" => &mut self.given.close,
            "given.disagree" => &mut self.given.disagree,
            "birth_date.exact" => &mut self.birth_date.exact,
            "birth_date.swapped_day_month" => &mut self.birth_date.swapped_day_month,
            "birth_date.one_digit" => &mut self.birth_date.one_digit,
            "birth_date.two_digits" => &mut self.birth_date.two_digits,
            "birth_date.disagree" => &mut self.birth_date.disagree,
            "sex.agree" => &mut self.sex.agree,
            "sex.disagree" => &mut self.sex.disagree,
            "address.full" => &mut self.address.full,
            "address.street" => &mut self.address.street,
            "address.postcode" => &mut self.address.postcode,
            "address.line" => &mut self.address.line,
            "address.near" => &mut self.address.near,
            "address.outward" => &mut self.address.outward,
            "address.town" => &mut self.address.town,
            "address.disagree" => &mut self.address.disagree,
            "postcode.exact" => &mut self.postcode.exact,
            "postcode.near" => &mut self.postcode.near,
            "postcode.outward" => &mut self.postcode.outward,
            "postcode.disagree" => &mut self.postcode.disagree,
            "town.exact" => &mut self.town.exact,
            "town.similar" => &mut self.town.similar,
            "town.disagree" => &mut self.town.disagree,
            "house.exact" => &mut self.house.exact,
            "house.near" => &mut self.house.near,
            "house.disagree" => &mut self.house.disagree,
            "street.exact" => &mut self.street.exact,
            "street.similar" => &mut self.street.similar,
            "street.crossed" => &mut self.street.crossed,
            "street.disagree" => &mut self.street.disagree,
            "second_line.exact" => &mut self.second_line.exact,
            "second_line.similar" => &mut self.second_line.similar,
            "second_line.disagree" => &mut self.second_line.disagree,
            _ => return None,
        })
    }

    pub fn level(&self, name: &str) -> Option<Level> {
        Some(match name {
            "nhs_number.agree" => self.nhs_number.agree,
            "nhs_number.disagree" => self.nhs_number.disagree,
            "family.exact" => self.family.exact,
            "family.similar" => self.family.similar,
            "family.phonetic" => self.family.phonetic,
            "family.close" => self.family.close,
            "family.swapped" => self.family.swapped,
            "family.crossed" => self.family.crossed,
            "family.disagree" => self.family.disagree,
            "given.exact" => self.given.exact,
            "given.nickname" => self.given.nickname,
            "given.similar" => self.given.similar,
            "given.phonetic" => self.given.phonetic,
            "given.close" => self.given.close,
            "given.disagree" => self.given.disagree,
            "birth_date.exact" => self.birth_date.exact,
            "birth_date.swapped_day_month" => self.birth_date.swapped_day_month,
            "birth_date.one_digit" => self.birth_date.one_digit,
            "birth_date.two_digits" => self.birth_date.two_digits,
            "birth_date.disagree" => self.birth_date.disagree,
            "sex.agree" => self.sex.agree,
            "sex.disagree" => self.sex.disagree,
            "address.full" => self.address.full,
            "address.street" => self.address.street,
            "address.postcode" => self.address.postcode,
            "address.line" => self.address.line,
            "address.near" => self.address.near,
            "address.outward" => self.address.outward,
            "address.town" => self.address.town,
            "address.disagree" => self.address.disagree,
            "postcode.exact" => self.postcode.exact,
            "postcode.near" => self.postcode.near,
            "postcode.outward" => self.postcode.outward,
            "postcode.disagree" => self.postcode.disagree,
            "town.exact" => self.town.exact,
            "town.similar" => self.town.similar,
            "town.disagree" => self.town.disagree,
            "house.exact" => self.house.exact,
            "house.near" => self.house.near,
            "house.disagree" => self.house.disagree,
            "street.exact" => self.street.exact,
            "street.similar" => self.street.similar,
            "street.crossed" => self.street.crossed,
            "street.disagree" => self.street.disagree,
            "second_line.exact" => self.second_line.exact,
            "second_line.similar" => self.second_line.similar,
            "second_line.disagree" => self.second_line.disagree,
            _ => return None,
        })
    }

    fn levels(&self) -> Vec<(&'static str, Level)> {
        Self::LEVELS
            .iter()
            .filter_map(|n| self.level(n).map(|l| (*n, l)))
            .collect()
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
        for (name, at) in [
            ("address", self.address.similar_at),
            ("town", self.town.similar_at),
            ("street", self.street.similar_at),
            ("second_line", self.second_line.similar_at),
        ] {
            if !(0.0..=1.0).contains(&at) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: need 0 <= similar_at <= 1"
                )));
            }
        }
        for (name, close, similar) in [
            ("family", self.family.close_at, self.family.similar_at),
            ("given", self.given.close_at, self.given.similar_at),
        ] {
            if !(0.0..=1.0).contains(&close) || close > similar || similar > 1.0 {
                return Err(ConfigError::Invalid(format!(
                    "{name}: need 0 <= close_at <= similar_at <= 1"
                )));
            }
        }
        for (name, table) in [
            ("family", &self.frequencies.family),
            ("given", &self.frequencies.given),
        ] {
            if let Some((value, _)) = table.iter().find(|(_, f)| !(**f > 0.0 && **f <= 1.0)) {
                return Err(ConfigError::Invalid(format!(
                    "frequencies.{name}.{value}: a frequency must be in (0, 1]"
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

/// Levels added after matching files were first written (`street.crossed`, `[second_line]`):
/// a file without them (an older estimate) takes the built-in file's values rather than
/// failing at start-up. Only these: any other level missing is still an error.
fn fill_later_levels(table: &mut toml::Table) {
    static BUILT_IN_TABLE: LazyLock<toml::Table> =
        LazyLock::new(|| toml::from_str(BUILT_IN).expect("the built-in file is TOML"));
    let built_in = &*BUILT_IN_TABLE;
    if !table.contains_key("second_line")
        && let Some(v) = built_in.get("second_line")
    {
        table.insert("second_line".into(), v.clone());
    }
    if let (Some(toml::Value::Table(street)), Some(crossed)) = (
        table.get_mut("street"),
        built_in.get("street").and_then(|s| s.get("crossed")),
    ) && !street.contains_key("crossed")
    {
        street.insert("crossed".into(), crossed.clone());
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
    let levels = comparison_levels(c, a, b);
    let score = levels
        .iter()
        .filter_map(|n| c.level(n))
        .map(|l| l.weight())
        .sum::<f64>()
        + frequency_adjustment(c, a, b, &levels);
    let grade = if conflict {
        // Two traced NHS numbers say these are two people. Only when everything else says they
        // are one (a number issued twice, or keyed against the wrong person) may a person look.
        if score >= c.thresholds.match_ {
            Grade::Possible
        } else {
            Grade::CertainlyNot
        }
    } else if score >= c.thresholds.match_ && !(c.safety.twins_cap_at_possible && twins(&levels)) {
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

/// Two records agreeing exactly on a common name are weaker evidence than the level's weight
/// says (`NGUYEN` in FEBRL4, `SMITH` in England): for a name of frequency f above the exact
/// level's u, its weight log2(m/u) becomes log2(m/f). Only ever lowered: a rare name, or a typo
/// that looks like one, never earns more than the level's weight, so the adjustment cannot lift
/// a pair toward an automatic link.
fn frequency_adjustment(
    c: &MatchConfig,
    a: &Demographics,
    b: &Demographics,
    levels: &[&str],
) -> f64 {
    fn lower(table: &BTreeMap<String, f64>, u: f64, name: Option<&String>) -> f64 {
        match name.and_then(|n| table.get(n)) {
            Some(&f) if f > u => (u / f).log2(),
            _ => 0.0,
        }
    }
    let mut adjustment = 0.0;
    if levels.contains(&"family.exact") {
        adjustment += lower(&c.frequencies.family, c.family.exact.u, a.family.as_ref());
    }
    // With crossed names the given level compares the names left over, not the given names.
    if levels.contains(&"given.exact") && a.given == b.given {
        adjustment += lower(&c.frequencies.given, c.given.exact.u, a.given.as_ref());
    }
    adjustment
}

/// Twins (or siblings sharing a birthday) look like one person with another first name: one
/// family name, one birth date, often one address. A given name that is merely close (a typo
/// such as `JOHN`/`JOAN` is also how two names of one family differ) counts as different.
fn twins(levels: &[&str]) -> bool {
    let given_differs = levels
        .iter()
        .any(|l| matches!(*l, "given.close" | "given.disagree"));
    // A twin whose names were exchanged (`JANE SMITH` against `SMITH JOHN`) crosses the family
    // name, and the given names left over differ like any twins'.
    let family_agrees = levels.iter().any(|l| {
        matches!(
            *l,
            "family.exact" | "family.similar" | "family.phonetic" | "family.crossed"
        )
    });
    let birth_agrees = levels
        .iter()
        .any(|l| matches!(*l, "birth_date.exact" | "birth_date.swapped_day_month"));
    given_differs && family_agrees && birth_agrees
}

/// The agreement level of each comparison both records can take part in (a field missing on
/// either side is no evidence either way); the estimator counts these.
pub fn comparison_levels(c: &MatchConfig, a: &Demographics, b: &Demographics) -> Vec<&'static str> {
    let mut levels = Vec::with_capacity(6);
    if let (Some(x), Some(y)) = (&a.nhs_number, &b.nhs_number) {
        levels.push(if x == y {
            "nhs_number.agree"
        } else {
            "nhs_number.disagree"
        });
    }
    let mut swapped = false;
    // The two names compared as given names, with their phonetic codes: the given names, or,
    // when one record's family name is the other's given name, the two names left over.
    let mut given: NamePair = (&a.given, &a.given_code, &b.given, &b.given_code);
    if let (Some(x), Some(y)) = (&a.family, &b.family) {
        let f = &c.family;
        let jw = jaro_winkler(x, y);
        levels.push(if x == y {
            "family.exact"
        } else if jw >= f.similar_at {
            "family.similar"
        } else if sounds_alike(a, b) {
            "family.phonetic"
        } else if names_swapped(c, a, b) {
            swapped = true;
            "family.swapped"
        } else if let Some(left) = names_crossed(c, a, b) {
            given = left;
            "family.crossed"
        } else if jw >= f.close_at {
            "family.close"
        } else {
            "family.disagree"
        });
    }
    // Exchanged names are one piece of evidence, carried by `family.swapped`: scoring the given
    // name as well would count it twice.
    let (x, x_code, y, y_code) = given;
    if let (Some(x), Some(y), false) = (x, y, swapped) {
        let g = &c.given;
        let jw = jaro_winkler(x, y);
        levels.push(if x == y {
            "given.exact"
        } else if nicknames(x, y) {
            "given.nickname"
        } else if jw >= g.similar_at {
            "given.similar"
        } else if x_code.is_some() && x_code == y_code {
            "given.phonetic"
        } else if jw >= g.close_at {
            "given.close"
        } else {
            "given.disagree"
        });
    }
    if let (Some(x), Some(y)) = (&a.birth_date, &b.birth_date) {
        let differing = x.bytes().zip(y.bytes()).filter(|(p, q)| p != q).count();
        levels.push(if x == y {
            "birth_date.exact"
        } else if swapped_day_month(x, y) {
            "birth_date.swapped_day_month"
        } else if x.len() == y.len() && differing == 1 {
            "birth_date.one_digit"
        } else if x.len() == y.len() && differing == 2 {
            "birth_date.two_digits"
        } else {
            "birth_date.disagree"
        });
    }
    if let (Some(x), Some(y)) = (&a.sex, &b.sex) {
        levels.push(if x == y { "sex.agree" } else { "sex.disagree" });
    }
    match c.address.compare {
        AddressCompare::Whole => levels.extend(address_level(&c.address, a, b)),
        AddressCompare::Parts => address_parts(c, a, b, &mut levels),
    }
    levels
}

/// The address as four independent comparisons (`address.compare = "parts"`), each made where
/// both records have the part: a postcode typo then leaves town, house and street to agree.
/// Not for UK data: two people of one household agree on all four, and the sum of four
/// agreements outweighs different names.
fn address_parts(c: &MatchConfig, a: &Demographics, b: &Demographics, levels: &mut Vec<&str>) {
    if let (Some(p), Some(q)) = (&a.postcode, &b.postcode) {
        levels.push(if p == q {
            "postcode.exact"
        } else if one_edit(p, q) {
            "postcode.near"
        } else if a.outward().is_some() && a.outward() == b.outward() {
            "postcode.outward"
        } else {
            "postcode.disagree"
        });
    }
    if let (Some(s), Some(t)) = (&a.town, &b.town) {
        levels.push(if s == t {
            "town.exact"
        } else if jaro_winkler(s, t) >= c.town.similar_at {
            "town.similar"
        } else {
            "town.disagree"
        });
    }
    // The second lines, or the names left over when the first lines crossed.
    let mut second: Option<(String, String)> = a.address_line2.clone().zip(b.address_line2.clone());
    if let (Some(l), Some(m)) = (&a.address_line, &b.address_line) {
        let ((n, s), (o, t)) = (line_parts(l), line_parts(m));
        if !n.is_empty() && !o.is_empty() {
            levels.push(if n == o {
                "house.exact"
            } else if one_edit(&n, &o) {
                "house.near"
            } else {
                "house.disagree"
            });
        }
        if !s.is_empty() && !t.is_empty() {
            levels.push(if s == t {
                "street.exact"
            } else if jaro_winkler(&s, &t) >= c.street.similar_at {
                "street.similar"
            } else if let Some(left) =
                lines_crossed(c, (&s, &a.address_line2), (&t, &b.address_line2))
            {
                second = left;
                "street.crossed"
            } else {
                "street.disagree"
            });
        }
    }
    if let Some((x, y)) = second {
        levels.push(if x == y {
            "second_line.exact"
        } else if jaro_winkler(&x, &y) >= c.second_line.similar_at {
            "second_line.similar"
        } else {
            "second_line.disagree"
        });
    }
}

/// When one record's street is (similar to) the other's second line, the lines were written
/// the other way round on one side: the names left over (that record's second line and the
/// other's street, as street words) are what remains to compare as second lines, if both are
/// there. `Some(None)`: crossed, nothing left to compare.
fn lines_crossed(
    c: &MatchConfig,
    (s, a2): (&str, &Option<String>),
    (t, b2): (&str, &Option<String>),
) -> Option<Option<(String, String)>> {
    let street_of = |line: &str| line_parts(line).1;
    let similar = |x: &str, y: &str| !y.is_empty() && jaro_winkler(x, y) >= c.street.similar_at;
    let (b2s, a2s) = (b2.as_deref().map(street_of), a2.as_deref().map(street_of));
    if b2s.as_deref().is_some_and(|y| similar(s, y)) {
        Some(a2s.filter(|x| !x.is_empty()).map(|x| (x, t.to_string())))
    } else if a2s.as_deref().is_some_and(|x| similar(t, x)) {
        Some(b2s.filter(|y| !y.is_empty()).map(|y| (s.to_string(), y)))
    } else {
        None
    }
}

/// Postcode, first line and town are one comparison because they are correlated (one address):
/// scored separately, a shared household address would outweigh different names and birth
/// dates. The levels go from the whole address to the town alone.
fn address_level(ad: &AddressLevels, a: &Demographics, b: &Demographics) -> Option<&'static str> {
    fn both<'x>(x: &'x Option<String>, y: &'x Option<String>) -> Option<(&'x str, &'x str)> {
        Some((x.as_deref()?, y.as_deref()?))
    }
    let postcodes = both(&a.postcode, &b.postcode);
    let lines = both(&a.address_line, &b.address_line).map(|(l, m)| lines(l, m, ad.similar_at));
    let towns = both(&a.town, &b.town).map(|(s, t)| jaro_winkler(s, t) >= ad.similar_at);
    if postcodes.is_none() && lines.is_none() && towns.is_none() {
        return None;
    }
    let postcode_equal = postcodes.is_some_and(|(p, q)| p == q);
    Some(
        if postcode_equal && matches!(lines, None | Some(Lines::Same)) {
            "address.full"
        } else if postcode_equal && lines == Some(Lines::Street) {
            "address.street"
        } else if postcode_equal {
            "address.postcode"
        } else if lines == Some(Lines::Same) {
            "address.line"
        } else if postcodes.is_some_and(|(p, q)| one_edit(p, q)) {
            "address.near"
        } else if a.outward().is_some() && a.outward() == b.outward() {
            "address.outward"
        } else if towns == Some(true) {
            "address.town"
        } else {
            "address.disagree"
        },
    )
}

/// Two names to compare as given names, each with its phonetic code.
type NamePair<'d> = (
    &'d Option<String>,
    &'d Option<String>,
    &'d Option<String>,
    &'d Option<String>,
);

/// The two names left to compare as given names when one record's family name is (or is
/// similar to) the other's given name, the other two not being so alike (that is
/// `names_swapped`): `SMITH JOHN` against `JON SMITH` leaves `JOHN`/`JON`, against a twin's
/// exchanged `JANE SMITH` leaves `JOHN`/`JANE`.
fn names_crossed<'d>(
    c: &MatchConfig,
    a: &'d Demographics,
    b: &'d Demographics,
) -> Option<NamePair<'d>> {
    let (Some(af), Some(ag), Some(bf), Some(bg)) = (&a.family, &a.given, &b.family, &b.given)
    else {
        return None;
    };
    if af == ag || bf == bg {
        return None;
    }
    if jaro_winkler(af, bg) >= c.family.similar_at {
        // a's given name against b's family name.
        Some((&a.given, &a.given_code, &b.family, &b.family_code))
    } else if jaro_winkler(bf, ag) >= c.family.similar_at {
        Some((&a.family, &a.family_code, &b.given, &b.given_code))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// Same street (Jaro–Winkler >= `similar_at`) and house number (where both have one).
    Same,
    /// Same street, another house number: a neighbour, or a mistyped number.
    Street,
    Different,
}

/// First address lines compared as house number and street (`demographics::line_parts`).
fn lines(l: &str, m: &str, similar_at: f64) -> Lines {
    let ((n, s), (o, t)) = (line_parts(l), line_parts(m));
    let street = (!s.is_empty() && !t.is_empty()).then(|| jaro_winkler(&s, &t) >= similar_at);
    let number = (!n.is_empty() && !o.is_empty()).then(|| n == o);
    match (street, number) {
        (Some(true), Some(false)) => Lines::Street,
        (Some(true), _) | (None, Some(true)) => Lines::Same,
        (Some(false), _) | (None, Some(false)) => Lines::Different,
        // A number alone against a street alone (`95`, `MILL COTTAGE`).
        (None, None) => Lines::Different,
    }
}

/// Family and given name exchanged between the two records.
fn names_swapped(c: &MatchConfig, a: &Demographics, b: &Demographics) -> bool {
    let (Some(af), Some(ag), Some(bf), Some(bg)) = (&a.family, &a.given, &b.family, &b.given)
    else {
        return false;
    };
    af != ag
        && jaro_winkler(af, bg) >= c.family.similar_at
        && jaro_winkler(ag, bf) >= c.given.similar_at
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

/// One keying slip: one character different, or two neighbours exchanged (`6017`/`6071`).
fn one_edit(x: &str, y: &str) -> bool {
    if x.len() != y.len() || x == y {
        return false;
    }
    let diff: Vec<usize> = x
        .bytes()
        .zip(y.bytes())
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, _)| i)
        .collect();
    match diff[..] {
        [_] => true,
        [i, j] => {
            j == i + 1 && x.as_bytes()[i] == y.as_bytes()[j] && x.as_bytes()[j] == y.as_bytes()[i]
        }
        _ => false,
    }
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
    fn exchanged_family_and_given_names_are_recognised() {
        let mut b = person();
        b.family = Some("WILLIAM".into());
        b.given = Some("SMITH".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"family.swapped"), "{s:?}");
        assert!(
            !s.levels.iter().any(|l| l.starts_with("given.")),
            "one piece of evidence, counted once: {s:?}"
        );
    }

    #[test]
    fn a_family_name_given_as_the_first_name_crosses_and_the_rest_is_compared() {
        // SMITH WILLIAM against BILL SMITH: the family name crossed over, and the names left
        // over are a nickname.
        let mut b = person();
        b.family = Some("BILL".into());
        b.given = Some("SMITH".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"family.crossed"), "{s:?}");
        assert!(s.levels.contains(&"given.nickname"), "{s:?}");
        assert_eq!(s.grade, Grade::Probable, "{s:?}");
        // The other way round: the given name crossed over.
        let mut b = person();
        b.family = Some("WILLIAM".into());
        b.given = Some("SMYTH".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"family.crossed"), "{s:?}");
        // SMITH against SMYTH: the names left over sound alike.
        assert!(s.levels.contains(&"given.phonetic"), "{s:?}");
    }

    #[test]
    fn a_twin_whose_names_were_exchanged_is_never_linked_automatically() {
        // The twin EDWARD SMITH, written with family and given name exchanged: the family name
        // crosses over, the first names differ, everything else agrees.
        let mut b = person();
        b.family = Some("EDWARD".into());
        b.given = Some("SMITH".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"family.crossed"), "{s:?}");
        assert!(s.levels.contains(&"given.disagree"), "{s:?}");
        assert!(s.score >= config().thresholds.match_, "{s:?}");
        assert_eq!(s.grade, Grade::Possible);
    }

    #[test]
    fn a_heavier_typo_is_close_not_different() {
        let mut b = person();
        b.given = Some("WLLIAMX".into());
        refresh_codes(&mut b);
        let s = compare(&person(), &b);
        assert!(s.levels.contains(&"given.close"), "{s:?}");
        assert!(!s.levels.contains(&"given.disagree"));
    }

    #[test]
    fn two_changed_digits_of_a_birth_date_are_their_own_level() {
        let mut b = person();
        b.birth_date = Some("1980-03-70".into());
        assert!(
            compare(&person(), &b)
                .levels
                .contains(&"birth_date.two_digits")
        );
        b.birth_date = Some("1991-12-25".into());
        assert!(
            compare(&person(), &b)
                .levels
                .contains(&"birth_date.disagree")
        );
    }

    #[test]
    fn address_levels_go_from_the_whole_address_to_the_town() {
        let level = |f: &dyn Fn(&mut Demographics)| {
            let (mut a, mut b) = (person(), person());
            a.town = Some("LEEDS".into());
            b.town = Some("LEEDS".into());
            f(&mut b);
            compare(&a, &b)
                .levels
                .into_iter()
                .find(|l| l.starts_with("address."))
        };
        assert_eq!(level(&|_| {}), Some("address.full"));
        // Another house number in the same street and postcode: a neighbour or a slip.
        assert_eq!(
            level(&|b| b.address_line = Some("14 MILL LANE".into())),
            Some("address.street")
        );
        assert_eq!(
            level(&|b| b.address_line = Some("12 MILL LAEN".into())),
            Some("address.full")
        );
        assert_eq!(
            level(&|b| b.address_line = Some("3 HIGH STREET".into())),
            Some("address.postcode")
        );
        assert_eq!(
            level(&|b| b.address_line = Some("12 HIGH STREET".into())),
            Some("address.postcode")
        );
        // A postcode typo under the same first line; a postcode typo alone.
        assert_eq!(
            level(&|b| b.postcode = Some("LS14BA".into())),
            Some("address.line")
        );
        // The first line agrees only with its house number.
        assert_eq!(
            level(&|b| {
                b.postcode = Some("LS14BA".into());
                b.address_line = Some("21 MILL LANE".into());
            }),
            Some("address.near")
        );
        assert_eq!(
            level(&|b| {
                b.postcode = Some("LS14AD".into());
                b.address_line = Some("3 HIGH STREET".into());
            }),
            Some("address.near")
        );
        assert_eq!(
            level(&|b| {
                b.postcode = Some("LS12XY".into());
                b.address_line = Some("3 HIGH STREET".into());
            }),
            Some("address.outward")
        );
        assert_eq!(
            level(&|b| {
                b.postcode = Some("LS279QQ".into());
                b.address_line = Some("3 HIGH STREET".into());
            }),
            Some("address.town")
        );
        assert_eq!(
            level(&|b| {
                b.postcode = None;
                b.address_line = None;
                b.town = None;
            }),
            None,
            "nothing to compare is no evidence"
        );
    }

    #[test]
    fn the_address_parts_are_scored_apart_only_when_the_file_says_so() {
        let (mut a, mut b) = (person(), person());
        a.town = Some("LEEDS".into());
        b.town = Some("LEDS".into());
        b.postcode = Some("LS14BA".into());
        b.address_line = Some("21 MILL LAEN".into());
        let address = |c: &MatchConfig, b: &Demographics| -> Vec<&'static str> {
            compare_with(c, &a, b)
                .levels
                .into_iter()
                .filter(|l| {
                    ["address.", "postcode.", "town.", "house.", "street."]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .collect()
        };
        let mut c = MatchConfig::built_in();
        assert_eq!(c.address.compare, AddressCompare::Whole);
        assert_eq!(address(&c, &b), ["address.near"]);
        c.address.compare = AddressCompare::Parts;
        assert_eq!(
            address(&c, &b),
            [
                "postcode.near",
                "town.similar",
                "house.near",
                "street.similar"
            ]
        );
        // A part missing on either side is no evidence; the others still count.
        b.town = None;
        b.address_line = Some("MILL LANE".into());
        assert_eq!(address(&c, &b), ["postcode.near", "street.exact"]);
        b.postcode = Some("BD74XY".into());
        b.address_line = Some("7 HIGH STREET".into());
        assert_eq!(
            address(&c, &b),
            ["postcode.disagree", "house.disagree", "street.disagree"]
        );
        let parts = BUILT_IN.replace(r#"compare = "whole""#, r#"compare = "parts""#);
        assert_eq!(
            MatchConfig::parse(&parts).unwrap().address.compare,
            AddressCompare::Parts
        );
        let bad = BUILT_IN.replace(r#"compare = "whole""#, r#"compare = "halves""#);
        assert!(MatchConfig::parse(&bad).is_err());
    }

    /// The address levels of `a` against `b` with the parts scored apart.
    fn part_levels(a: &Demographics, b: &Demographics) -> Vec<&'static str> {
        let mut c = MatchConfig::built_in();
        c.address.compare = AddressCompare::Parts;
        compare_with(&c, a, b)
            .levels
            .into_iter()
            .filter(|l| {
                ["house.", "street.", "second_line."]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect()
    }

    fn lines(first: &str, second: Option<&str>) -> Demographics {
        let mut d = person();
        d.address_line = Some(first.into());
        d.address_line2 = second.map(Into::into);
        d
    }

    #[test]
    fn second_lines_are_compared_when_both_records_have_one() {
        let a = lines("12 MILL LANE", Some("ROSE COTTAGE"));
        assert_eq!(
            part_levels(&a, &lines("12 MILL LANE", Some("ROSE COTTAGE"))),
            ["house.exact", "street.exact", "second_line.exact"]
        );
        assert_eq!(
            part_levels(&a, &lines("12 MILL LANE", Some("ROSE COTAGE"))),
            ["house.exact", "street.exact", "second_line.similar"]
        );
        assert_eq!(
            part_levels(&a, &lines("12 MILL LANE", Some("IVY COTTAGE"))),
            ["house.exact", "street.exact", "second_line.disagree"]
        );
        // Missing on either side: no evidence either way.
        assert_eq!(
            part_levels(&a, &lines("12 MILL LANE", None)),
            ["house.exact", "street.exact"]
        );
    }

    #[test]
    fn first_lines_written_the_other_way_round_cross_and_the_rest_is_compared() {
        // The building first on one side, the street first on the other.
        let a = lines("ROSE COTTAGE", Some("12 MILL LANE"));
        let b = lines("12 MILL LANE", Some("ROSE COTTAGE"));
        assert_eq!(part_levels(&a, &b), ["street.crossed", "second_line.exact"]);
        assert_eq!(part_levels(&b, &a), ["street.crossed", "second_line.exact"]);
        // FEBRL's exchange: the number stays in front, the words change lines, with a typo.
        let a = lines("25 ASHCROFT CRESCENT", Some("ROSEBERY HILL"));
        let b = lines("25 ROSEBERYHILL", Some("ASHCROFT CRESCENT"));
        assert_eq!(
            part_levels(&a, &b),
            ["house.exact", "street.crossed", "second_line.similar"]
        );
        // One side has no second line: crossed, nothing left to compare.
        let c = lines("ROSE COTTAGE", None);
        assert_eq!(
            part_levels(&c, &lines("12 MILL LANE", Some("ROSE COTTAGE"))),
            ["street.crossed"]
        );
        // The names left over differ: another building of the street.
        let d = lines("12 MILL LANE", Some("IVY COTTAGE"));
        assert_eq!(
            part_levels(&lines("ROSE COTTAGE", Some("12 MILL LANE")), &d),
            ["street.crossed", "second_line.disagree"]
        );
    }

    #[test]
    fn a_street_that_is_not_the_other_second_line_does_not_cross() {
        // Another building, the same street line second: the first lines differ and neither
        // is the other's second line; the second lines are compared as they are.
        let a = lines("ROSE COTTAGE", Some("12 MILL LANE"));
        let b = lines("IVY COTTAGE", Some("12 MILL LANE"));
        assert_eq!(
            part_levels(&a, &b),
            ["street.disagree", "second_line.exact"]
        );
        let b = lines("3 HIGH STREET", Some("FLAT 2"));
        assert_eq!(
            part_levels(&lines("12 MILL LANE", Some("ROSE COTTAGE")), &b),
            ["house.disagree", "street.disagree", "second_line.disagree"]
        );
    }

    #[test]
    fn the_whole_address_ignores_the_second_line() {
        let c = MatchConfig::built_in();
        assert_eq!(c.address.compare, AddressCompare::Whole);
        let a = lines("ROSE COTTAGE", Some("12 MILL LANE"));
        for b in [
            lines("12 MILL LANE", Some("ROSE COTTAGE")),
            lines("ROSE COTTAGE", None),
            lines("ROSE COTTAGE", Some("IVY COTTAGE")),
        ] {
            let with = compare_with(&c, &a, &b);
            let mut without = b.clone();
            without.address_line2 = None;
            let plain = compare_with(&c, &lines("ROSE COTTAGE", None), &without);
            assert_eq!(with.levels, plain.levels, "{with:?}");
            assert_eq!(with.score, plain.score);
        }
    }

    #[test]
    fn a_matching_file_from_before_the_second_line_takes_the_built_in_levels() {
        let crossed = "crossed = { m = 0.01, u = 0.0001 }";
        let start = BUILT_IN.find("\n[second_line]").unwrap() + 1;
        let end = start + BUILT_IN[start..].find("\n\n").unwrap();
        let old = format!("{}{}", &BUILT_IN[..start], &BUILT_IN[end..]).replace(crossed, "");
        assert!(!old.contains("\n[second_line]") && !old.contains(crossed));
        let c = MatchConfig::parse(&old).expect("an older file still reads");
        let built_in = MatchConfig::built_in();
        for l in [
            "street.crossed",
            "second_line.exact",
            "second_line.similar",
            "second_line.disagree",
        ] {
            let (x, y) = (c.level(l).unwrap(), built_in.level(l).unwrap());
            assert_eq!((x.m, x.u), (y.m, y.u), "{l}");
        }
        assert_eq!(c.second_line.similar_at, built_in.second_line.similar_at);
        // Only those: another level missing is still an error.
        let bad = BUILT_IN.replace("near = { m = 0.02, u = 0.02 }", "");
        assert!(MatchConfig::parse(&bad).is_err());
    }

    #[test]
    fn a_first_name_slip_with_other_differences_is_not_taken_for_twins() {
        // The first name differs and so does the birth date: not the twins' pattern, the score
        // decides.
        let mut b = person();
        b.given = Some("EDWARD".into());
        b.birth_date = Some("1980-03-17".into());
        refresh_codes(&mut b);
        assert!(!twins(&compare(&person(), &b).levels));
        // Same family name and birth date with a close first name: twins' pattern.
        let mut b = person();
        b.given = Some("WLLIAMX".into());
        refresh_codes(&mut b);
        assert!(twins(&compare(&person(), &b).levels));
    }

    #[test]
    fn every_level_has_a_name_and_probabilities() {
        let mut c = MatchConfig::built_in();
        for &l in MatchConfig::LEVELS {
            assert!(c.level(l).is_some(), "{l}");
            assert!(c.level_mut(l).is_some(), "{l}");
        }
        assert!(c.level("family.unknown").is_none());
    }

    #[test]
    fn a_common_name_counts_for_less_and_a_rare_one_for_no_more() {
        let mut c = MatchConfig::built_in();
        let plain = compare_with(&c, &person(), &person()).score;
        let u = c.family.exact.u;
        c.frequencies.family.insert("SMITH".into(), 8.0 * u);
        c.frequencies.given.insert("WILLIAM".into(), u / 2.0);
        let s = compare_with(&c, &person(), &person());
        assert!((plain - s.score - 3.0).abs() < 1e-9, "{plain} {s:?}");
        // A family name agreeing only as similar is not adjusted.
        let mut b = person();
        b.family = Some("SMIHT".into());
        refresh_codes(&mut b);
        assert_eq!(
            compare_with(&c, &person(), &b).score,
            compare_with(&MatchConfig::built_in(), &person(), &b).score
        );
        let bad = format!("{BUILT_IN}\n[frequencies.family]\nSMITH = 1.5\n");
        assert!(MatchConfig::parse(&bad).is_err());
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
