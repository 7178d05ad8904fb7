//! Estimating the m/u probabilities from the records themselves (issue 5: "optionally estimated
//! from the data"), as Splink does: u from pairs drawn at random (almost all of them are two
//! people), m and the share of matches by expectation–maximisation over the pairs blocking
//! finds, u held fixed. Pure counting over agreement patterns; `shcr identity-estimate` feeds
//! it and writes the result as a matching file the server reads like any other.

use std::collections::HashMap;

use super::scoring::{AddressCompare, MatchConfig};

/// How many pairs showed each combination of agreement levels (one level per comparison both
/// records could take part in).
pub type Patterns = HashMap<Vec<&'static str>, u64>;

/// The comparison a level belongs to: `family` for `family.exact`.
fn comparison(level: &str) -> &str {
    level.split_once('.').map_or(level, |(c, _)| c)
}

/// Levels of a deterministic link carry no m/u of their own.
fn probabilistic(pattern: &[&str]) -> bool {
    !pattern.contains(&"nhs_number.verified")
}

/// u per level from pairs of (almost surely) different people: the share of pairs, among those
/// where the comparison applies, that land on the level. Add-one smoothing: a level no random
/// pair reached is rare, not impossible. A comparison no pair could make keeps `prior`'s u.
pub fn u_from_random(random: &Patterns, prior: &MatchConfig) -> HashMap<&'static str, f64> {
    let mut at: HashMap<&str, f64> = HashMap::new();
    let mut of: HashMap<&str, f64> = HashMap::new();
    for (pattern, &n) in random.iter().filter(|(p, _)| probabilistic(p)) {
        for &l in pattern {
            *at.entry(l).or_default() += n as f64;
            *of.entry(comparison(l)).or_default() += n as f64;
        }
    }
    let per_comparison = |c: &str| {
        MatchConfig::LEVELS
            .iter()
            .filter(|l| comparison(l) == c)
            .count() as f64
    };
    MatchConfig::LEVELS
        .iter()
        .map(|&l| {
            let c = comparison(l);
            let u = match of.get(c) {
                Some(&total) if total > 0.0 => {
                    (at.get(l).copied().unwrap_or(0.0) + 1.0) / (total + per_comparison(c))
                }
                _ => prior.level(l).map_or(0.5, |x| x.u),
            };
            (l, u)
        })
        .collect()
}

/// The result of estimation.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub config: MatchConfig,
    /// Estimated share of true matches among the blocked pairs.
    pub lambda: f64,
    pub iterations: usize,
}

impl Estimate {
    /// The score at which a blocked pair is a match with probability `p`.
    pub fn score_at_probability(&self, p: f64) -> f64 {
        (p / (1.0 - p)).log2() - (self.lambda / (1.0 - self.lambda)).log2()
    }
}

/// EM for m and λ with u fixed. `prior_weight` pseudo-pairs of `prior`'s m keep a level the
/// data hardly shows (nicknames in a data set without any) from an m of 0, whose weight would
/// be minus infinity.
pub fn estimate(
    prior: &MatchConfig,
    blocked: &Patterns,
    u: &HashMap<&'static str, f64>,
    prior_weight: f64,
) -> Estimate {
    let patterns: Vec<(&Vec<&'static str>, f64)> = blocked
        .iter()
        .filter(|(p, _)| probabilistic(p))
        .map(|(p, &n)| (p, n as f64))
        .collect();
    let total: f64 = patterns.iter().map(|(_, n)| n).sum();
    let mut m: HashMap<&'static str, f64> = MatchConfig::LEVELS
        .iter()
        .map(|&l| (l, prior.level(l).map_or(0.5, |x| x.m)))
        .collect();
    let mut lambda: f64 = 0.1;
    let mut iterations = 0;
    for _ in 0..200 {
        iterations += 1;
        let mut at: HashMap<&str, f64> = HashMap::new();
        let mut of: HashMap<&str, f64> = HashMap::new();
        let mut matches = 0.0;
        for (pattern, n) in &patterns {
            // Odds in log2 to stay finite over many comparisons.
            let log_odds: f64 = pattern.iter().map(|l| (m[l] / u[l]).log2()).sum::<f64>()
                + (lambda / (1.0 - lambda)).log2();
            let w = 1.0 / (1.0 + (-log_odds).exp2());
            matches += n * w;
            for &l in pattern.iter() {
                *at.entry(l).or_default() += n * w;
                *of.entry(comparison(l)).or_default() += n * w;
            }
        }
        let mut change: f64 = 0.0;
        for &l in MatchConfig::LEVELS {
            let m0 = prior.level(l).map_or(0.5, |x| x.m);
            let of = of.get(comparison(l)).copied().unwrap_or(0.0) + prior_weight;
            // A comparison no pair could make (no sex in FEBRL) keeps the prior.
            let next = if of > 0.0 {
                (at.get(l).copied().unwrap_or(0.0) + prior_weight * m0) / of
            } else {
                m0
            };
            change = change.max((next - m[l]).abs());
            m.insert(l, next);
        }
        let next_lambda = if total > 0.0 {
            (matches / total).clamp(1e-9, 1.0 - 1e-9)
        } else {
            lambda
        };
        change = change.max((next_lambda - lambda).abs());
        lambda = next_lambda;
        if change < 1e-7 {
            break;
        }
    }
    let mut config = prior.clone();
    for &l in MatchConfig::LEVELS {
        if let Some(level) = config.level_mut(l) {
            level.m = m[l].clamp(1e-9, 1.0);
            level.u = u[l].clamp(1e-12, 1.0);
        }
    }
    Estimate {
        config,
        lambda,
        iterations,
    }
}

/// The pairs one blocking key found, and the comparisons the key is made of.
pub struct RulePairs {
    pub name: &'static str,
    pub uses: &'static [&'static str],
    pub pairs: Patterns,
}

/// EM per blocking key, as Splink trains per blocking rule: among pairs that share a postcode
/// the address agrees for matches and non-matches alike, so u from random pairs would make
/// every such pair look like a match (one EM over all blocked pairs converges on "every pair is
/// a match"). Each key's run leaves out the comparisons the key is made of and estimates m for
/// the others; a level's m is the average over the runs that estimated it, weighted by their
/// expected matches. λ is then estimated over all blocked pairs with m and u fixed.
pub fn estimate_by_rule(
    prior: &MatchConfig,
    rules: &[RulePairs],
    blocked: &Patterns,
    u: &HashMap<&'static str, f64>,
    prior_weight: f64,
) -> Estimate {
    let mut num: HashMap<&'static str, f64> = HashMap::new();
    let mut den: HashMap<&'static str, f64> = HashMap::new();
    let mut iterations = 0;
    for rule in rules {
        let mut stripped = Patterns::new();
        for (pattern, &n) in rule.pairs.iter().filter(|(p, _)| probabilistic(p)) {
            let kept: Vec<&'static str> = pattern
                .iter()
                .copied()
                .filter(|l| !rule.uses.contains(&comparison(l)))
                .collect();
            *stripped.entry(kept).or_default() += n;
        }
        let total: u64 = stripped.values().sum();
        if total == 0 {
            continue;
        }
        let e = estimate(prior, &stripped, u, prior_weight);
        iterations += e.iterations;
        let matches = e.lambda * total as f64;
        for &l in MatchConfig::LEVELS {
            if rule.uses.contains(&comparison(l)) {
                continue;
            }
            let m = e.config.level(l).map_or(0.0, |x| x.m);
            *num.entry(l).or_default() += matches * m;
            *den.entry(l).or_default() += matches;
        }
    }
    let mut config = prior.clone();
    for &l in MatchConfig::LEVELS {
        if let Some(level) = config.level_mut(l) {
            if let Some(&d) = den.get(l).filter(|&&d| d > 0.0) {
                level.m = (num[l] / d).clamp(1e-9, 1.0);
            }
            level.u = u[l].clamp(1e-12, 1.0);
        }
    }
    let lambda = share_of_matches(&config, blocked);
    Estimate {
        config,
        lambda,
        iterations,
    }
}

/// λ by EM with m and u fixed.
fn share_of_matches(c: &MatchConfig, patterns: &Patterns) -> f64 {
    let weights: Vec<(f64, f64)> = patterns
        .iter()
        .filter(|(p, _)| probabilistic(p))
        .map(|(p, &n)| {
            let w: f64 = p
                .iter()
                .filter_map(|l| c.level(l))
                .map(|l| l.weight())
                .sum();
            (w, n as f64)
        })
        .collect();
    let total: f64 = weights.iter().map(|(_, n)| n).sum();
    if total == 0.0 {
        return 0.0;
    }
    let mut lambda: f64 = 0.1;
    for _ in 0..500 {
        let prior = (lambda / (1.0 - lambda)).log2();
        let matches: f64 = weights
            .iter()
            .map(|(w, n)| n / (1.0 + (-(w + prior)).exp2()))
            .sum();
        let next = (matches / total).clamp(1e-9, 1.0 - 1e-9);
        if (next - lambda).abs() < 1e-10 {
            return next;
        }
        lambda = next;
    }
    lambda
}

/// The share of records carrying each name, kept for the names more frequent than `u` (the
/// exact level's chance that two different people share a name): those whose agreement the
/// scorer counts for less (`scoring::Frequencies`). Records without the name are not counted.
pub fn frequencies<'a>(
    names: impl Iterator<Item = &'a str>,
    u: f64,
) -> std::collections::BTreeMap<String, f64> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    let mut total = 0u64;
    for n in names {
        *counts.entry(n).or_default() += 1;
        total += 1;
    }
    counts
        .into_iter()
        .map(|(n, k)| (n.to_string(), k as f64 / total as f64))
        .filter(|&(_, f)| f > u)
        .collect()
}

/// The configuration as a matching file (the format of `identity/matching.toml`).
pub fn to_toml(c: &MatchConfig, header: &str) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str(&format!(
        "\n[thresholds]\nmatch = {:?}\npossible = {:?}\n\n[safety]\ntwins_cap_at_possible = {}\n",
        c.thresholds.match_, c.thresholds.possible, c.safety.twins_cap_at_possible
    ));
    let mut section = "";
    for &l in MatchConfig::LEVELS {
        let (comp, name) = l.split_once('.').expect("levels are comparison.level");
        if comp != section {
            out.push_str(&thresholds_of(c, section));
            section = comp;
            out.push_str(&format!("\n[{comp}]\n"));
        }
        let level = c.level(l).expect("a listed level");
        out.push_str(&format!(
            "{name} = {{ m = {:.6e}, u = {:.6e} }}    # weight {:.2}\n",
            level.m,
            level.u,
            level.weight()
        ));
    }
    out.push_str(&thresholds_of(c, section));
    for (name, table) in [
        ("family", &c.frequencies.family),
        ("given", &c.frequencies.given),
    ] {
        if table.is_empty() {
            continue;
        }
        out.push_str(&format!("\n[frequencies.{name}]\n"));
        for (value, f) in table {
            out.push_str(&format!("{value} = {f:.6e}\n"));
        }
    }
    out
}

/// The similarity thresholds that belong in a comparison's table.
fn thresholds_of(c: &MatchConfig, comparison: &str) -> String {
    match comparison {
        "family" => format!(
            "similar_at = {:?}\nclose_at = {:?}\n",
            c.family.similar_at, c.family.close_at
        ),
        "given" => format!(
            "similar_at = {:?}\nclose_at = {:?}\n",
            c.given.similar_at, c.given.close_at
        ),
        "address" => format!(
            "similar_at = {:?}\ncompare = \"{}\"\n",
            c.address.similar_at,
            match c.address.compare {
                AddressCompare::Whole => "whole",
                AddressCompare::Parts => "parts",
            }
        ),
        "town" => format!("similar_at = {:?}\n", c.town.similar_at),
        "street" => format!("similar_at = {:?}\n", c.street.similar_at),
        "second_line" => format!("similar_at = {:?}\n", c.second_line.similar_at),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pairs_give_u_with_add_one_smoothing() {
        let prior = MatchConfig::built_in();
        let mut random = Patterns::new();
        random.insert(vec!["family.exact"], 9);
        random.insert(vec!["family.disagree"], 980);
        random.insert(vec!["family.similar"], 4);
        let u = u_from_random(&random, &prior);
        // 993 pairs compared family names; seven family levels.
        assert!((u["family.exact"] - 10.0 / 1000.0).abs() < 1e-12);
        assert!((u["family.swapped"] - 1.0 / 1000.0).abs() < 1e-12);
        // No pair compared sex: the prior stands.
        assert_eq!(u["sex.agree"], prior.sex.agree.u);
    }

    #[test]
    fn em_recovers_m_and_the_share_of_matches() {
        // 1,000 blocked pairs: 100 matches agreeing on family name 90 % of the time and on the
        // birth date 80 %; 900 non-matches agreeing 5 % and 1 %.
        let prior = MatchConfig::built_in();
        let mut blocked = Patterns::new();
        let mut add = |f: &'static str, b: &'static str, n: u64| {
            *blocked.entry(vec![f, b]).or_default() += n;
        };
        let (fe, fd) = ("family.exact", "family.disagree");
        let (be, bd) = ("birth_date.exact", "birth_date.disagree");
        // Matches (independent fields): 72 / 18 / 8 / 2.
        add(fe, be, 72);
        add(fe, bd, 18);
        add(fd, be, 8);
        add(fd, bd, 2);
        // Non-matches: 0.05 × 0.01 × 900 ≈ 0, 0.05 × 0.99 × 900 ≈ 45, 0.95 × 0.01 × 900 ≈ 9.
        add(fe, bd, 45);
        add(fd, be, 9);
        add(fd, bd, 846);
        let mut u = u_from_random(&Patterns::new(), &prior);
        u.insert(fe, 0.05);
        u.insert(fd, 0.95);
        u.insert(be, 0.01);
        u.insert(bd, 0.99);
        let e = estimate(&prior, &blocked, &u, 0.0);
        assert!((e.lambda - 0.1).abs() < 0.02, "{e:?}");
        let m = |l| e.config.level(l).unwrap().m;
        assert!((m(fe) - 0.9).abs() < 0.05, "{}", m(fe));
        assert!((m(be) - 0.8).abs() < 0.05, "{}", m(be));
        // Levels the data never shows keep what the prior weight gives them.
        let e = estimate(&prior, &blocked, &u, 10.0);
        assert!(e.config.given.nickname.m > 0.0);
    }

    #[test]
    fn em_per_blocking_key_ignores_the_comparisons_of_the_key() {
        // Pairs sharing a postcode: the address agrees for all of them, so it says nothing;
        // family name and birth date separate 100 matches (90 % and 80 % agree) from 900
        // non-matches (5 % and 1 %), as in `em_recovers_m_and_the_share_of_matches`.
        let prior = MatchConfig::built_in();
        let (fe, fd) = ("family.exact", "family.disagree");
        let (be, bd) = ("birth_date.exact", "birth_date.disagree");
        let full = "address.full";
        let mut pairs = Patterns::new();
        for (f, b, n) in [
            (fe, be, 72),
            (fe, bd, 18 + 45),
            (fd, be, 8 + 9),
            (fd, bd, 2 + 846),
        ] {
            pairs.insert(vec![f, b, full], n);
        }
        let mut u = u_from_random(&Patterns::new(), &prior);
        for (l, x) in [
            (fe, 0.05),
            (fd, 0.95),
            (be, 0.01),
            (bd, 0.99),
            (full, 0.0001),
        ] {
            u.insert(l, x);
        }
        let rules = [RulePairs {
            name: "postcode",
            uses: &["address"],
            pairs: pairs.clone(),
        }];
        let e = estimate_by_rule(&prior, &rules, &pairs, &u, 0.0);
        let m = |l| e.config.level(l).unwrap().m;
        assert!((m(fe) - 0.9).abs() < 0.05, "{}", m(fe));
        assert!((m(be) - 0.8).abs() < 0.05, "{}", m(be));
        // The address's m is not estimated from pairs chosen for agreeing on it.
        assert_eq!(e.config.address.full.m, prior.address.full.m);
        // A plain EM over the same pairs takes the shared address for evidence of a match.
        let plain = estimate(&prior, &pairs, &u, 0.0);
        assert!(plain.lambda > 0.9, "{plain:?}");
    }

    #[test]
    fn written_file_reads_back_the_same() {
        let mut c = MatchConfig::built_in();
        c.family.exact.m = 0.912_345;
        c.address.town.u = 0.000_123_4;
        let text = to_toml(&c, "estimated\nfrom test data");
        let back = MatchConfig::parse(&text).expect("valid file");
        for &l in MatchConfig::LEVELS {
            let (a, b) = (c.level(l).unwrap(), back.level(l).unwrap());
            assert!(
                (a.m - b.m).abs() <= a.m * 1e-6 && (a.u - b.u).abs() <= a.u * 1e-6,
                "{l}"
            );
        }
        assert_eq!(back.thresholds.match_, c.thresholds.match_);
        assert_eq!(back.family.close_at, c.family.close_at);
        assert_eq!(back.given.similar_at, c.given.similar_at);
        assert_eq!(back.address.compare, AddressCompare::Whole);
        c.address.compare = AddressCompare::Parts;
        c.street.similar_at = 0.91;
        let back = MatchConfig::parse(&to_toml(&c, "parts")).expect("valid file");
        assert_eq!(back.address.compare, AddressCompare::Parts);
        assert_eq!(back.street.similar_at, 0.91);
        assert!(back.frequencies.family.is_empty());
    }

    #[test]
    fn common_names_get_their_frequency_and_are_written() {
        let names = ["NGUYEN", "NGUYEN", "NGUYEN", "SMITH", "JONES", "BROWN"];
        let f = frequencies(names.iter().copied(), 0.2);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!((f["NGUYEN"] - 0.5).abs() < 1e-12);
        let mut c = MatchConfig::built_in();
        c.frequencies.family = f;
        let back = MatchConfig::parse(&to_toml(&c, "test")).expect("valid file");
        assert!((back.frequencies.family["NGUYEN"] - 0.5).abs() < 1e-9);
    }
}
