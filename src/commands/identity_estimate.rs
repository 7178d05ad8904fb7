//! `shcr identity-estimate`: estimates the matching file's m/u probabilities from a set of
//! Patient records (EM, see `identity::estimate`) and writes it for the server to read
//! (`identity_matching = "path"`); with the records' truth (FEBRL4, generated people) it also
//! reports, pair by pair, where true pairs are lost: not found by blocking, below the review
//! threshold, held back by the twins rule. No database: blocking is done in memory with the
//! linker's own keys, so a change of weights or levels is judged in seconds before the online
//! bench (`shcr bench-identity`) confirms it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rand::{Rng, SeedableRng};

use crate::generate::{GenerateOptions, patient_samples};
use crate::identity::demographics::Demographics;
use crate::identity::estimate::{self, Patterns};
use crate::identity::link::blocking_keys;
use crate::identity::scoring::{self, AddressCompare, Grade, MatchConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct IdentityEstimateArgs {
    /// FEBRL4 folder (`dataset4a.csv`, `dataset4b.csv`), as for `bench-identity --febrl4`.
    #[arg(long)]
    pub febrl4: Option<PathBuf>,
    /// Otherwise generated records (`shcr generate`'s people, as `bench-identity` links them).
    #[arg(long, default_value_t = 20_000)]
    pub records: usize,
    #[arg(long, default_value_t = 6)]
    pub trusts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pairs drawn at random to estimate u.
    #[arg(long, default_value_t = 2_000_000)]
    pub random_pairs: usize,
    /// Pseudo-pairs of the starting file's m per comparison (keeps levels the data never shows
    /// from a weight of minus infinity).
    #[arg(long, default_value_t = 10.0)]
    pub prior_weight: f64,
    /// Only report on the configured matching file; estimate nothing.
    #[arg(long)]
    pub no_estimate: bool,
    /// Write the estimated matching file here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Thresholds of the written file, as scores (default: the starting file's).
    #[arg(long)]
    pub match_threshold: Option<f64>,
    #[arg(long)]
    pub possible_threshold: Option<f64>,
    /// Thresholds as the estimated probability that a candidate pair is a match (the score
    /// where the posterior, with the estimated share of matches, reaches it).
    #[arg(long, conflicts_with = "match_threshold")]
    pub match_probability: Option<f64>,
    #[arg(long, conflicts_with = "possible_threshold")]
    pub possible_probability: Option<f64>,
    /// The twins rule of the written file (default: the starting file's).
    #[arg(long)]
    pub twins_cap: Option<bool>,
    /// Estimate the frequencies of common names (the term-frequency adjustment of exact name
    /// agreement) along with m and u.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub term_frequencies: bool,
    /// Score the address as one comparison (`whole`) or as independent comparisons of its
    /// parts (`parts`: postcode, town, house number, street); default: the starting file's.
    #[arg(long, value_parser = ["whole", "parts"])]
    pub address_compare: Option<String>,
}

struct Rec {
    truth: String,
    d: Demographics,
}

pub fn run(args: IdentityEstimateArgs) -> anyhow::Result<()> {
    let samples = match &args.febrl4 {
        Some(dir) => super::bench_identity::febrl4(dir)?,
        None => {
            let opts = GenerateOptions {
                persons: args.records.clamp(1, crate::generate::MAX_PERSONS),
                trusts: args.trusts,
                seed: args.seed,
                ..GenerateOptions::default()
            };
            patient_samples(&opts).take(args.records).collect()
        }
    };
    let recs: Vec<Rec> = samples
        .into_iter()
        .map(|s| Rec {
            truth: s.person_key,
            d: Demographics::from_patient(&s.patient),
        })
        .collect();
    let mut start = scoring::config().clone();
    match args.address_compare.as_deref() {
        Some("parts") => start.address.compare = AddressCompare::Parts,
        Some(_) => start.address.compare = AddressCompare::Whole,
        None => {}
    }
    let pairs = blocked_pairs(&recs);
    println!(
        "records {}, blocked pairs {} (the linker's keys, no candidate limit)",
        recs.len(),
        pairs.len()
    );
    let mut config = start.clone();
    if !args.no_estimate {
        let mut blocked = Patterns::new();
        for &(i, j) in &pairs {
            let s = scoring::compare_with(&start, &recs[i].d, &recs[j].d);
            *blocked.entry(s.levels).or_default() += 1;
        }
        let mut random = Patterns::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        let n = recs.len();
        if n >= 2 {
            for _ in 0..args.random_pairs {
                let i = rng.random_range(0..n);
                let j = rng.random_range(0..n - 1);
                let j = if j >= i { j + 1 } else { j };
                let s = scoring::compare_with(&start, &recs[i].d, &recs[j].d);
                *random.entry(s.levels).or_default() += 1;
            }
        }
        let u = estimate::u_from_random(&random, &start);
        let rules: Vec<estimate::RulePairs> = RULES
            .iter()
            .map(|&(name, uses)| {
                let mut found = Patterns::new();
                for (i, j) in rule_pairs(&recs, name) {
                    let s = scoring::compare_with(&start, &recs[i].d, &recs[j].d);
                    *found.entry(s.levels).or_default() += 1;
                }
                estimate::RulePairs {
                    name,
                    uses,
                    pairs: found,
                }
            })
            .collect();
        let e = estimate::estimate_by_rule(&start, &rules, &blocked, &u, args.prior_weight);
        println!(
            "EM: {} iterations; share of matches among blocked pairs {:.5}; match probability \
             0.5 at score {:.1}, 0.99 at {:.1}, 0.999 at {:.1}",
            e.iterations,
            e.lambda,
            e.score_at_probability(0.5),
            e.score_at_probability(0.99),
            e.score_at_probability(0.999)
        );
        config = e.config.clone();
        config.frequencies = Default::default();
        if args.term_frequencies {
            let family = recs.iter().filter_map(|r| r.d.family.as_deref());
            let given = recs.iter().filter_map(|r| r.d.given.as_deref());
            config.frequencies.family = estimate::frequencies(family, config.family.exact.u);
            config.frequencies.given = estimate::frequencies(given, config.given.exact.u);
            for (name, table) in [
                ("family", &config.frequencies.family),
                ("given", &config.frequencies.given),
            ] {
                let mut common: Vec<(&String, &f64)> = table.iter().collect();
                common.sort_by(|a, b| b.1.total_cmp(a.1));
                let top: Vec<String> = common
                    .iter()
                    .take(5)
                    .map(|(n, f)| format!("{n} {f:.4}"))
                    .collect();
                println!(
                    "term frequencies, {name}: {} names more frequent than u (commonest: {})",
                    table.len(),
                    top.join(", ")
                );
            }
        }
        if let Some(p) = args.match_probability {
            config.thresholds.match_ = e.score_at_probability(p);
        }
        if let Some(p) = args.possible_probability {
            config.thresholds.possible = e.score_at_probability(p);
        }
        for &l in MatchConfig::LEVELS {
            let (a, b) = (
                start.level(l).expect("level"),
                config.level(l).expect("level"),
            );
            println!(
                "  {l:<30} m {:.5} → {:.5}  u {:.3e} → {:.3e}  weight {:6.2} → {:6.2}",
                a.m,
                b.m,
                a.u,
                b.u,
                a.weight(),
                b.weight()
            );
        }
    }
    if let Some(t) = args.match_threshold {
        config.thresholds.match_ = t;
    }
    if let Some(t) = args.possible_threshold {
        config.thresholds.possible = t;
    }
    if let Some(t) = args.twins_cap {
        config.safety.twins_cap_at_possible = t;
    }
    println!(
        "thresholds: match {:.2}, possible {:.2}; twins rule {}",
        config.thresholds.match_,
        config.thresholds.possible,
        if config.safety.twins_cap_at_possible {
            "on"
        } else {
            "off"
        }
    );
    report(&config, &recs, &pairs);
    if let Some(out) = &args.out {
        let source = match &args.febrl4 {
            Some(dir) => format!("FEBRL4 ({})", dir.display()),
            None => format!(
                "{} generated records (seed {}, {} trusts)",
                recs.len(),
                args.seed,
                args.trusts
            ),
        };
        let header = format!(
            "Estimated by `shcr identity-estimate` from {source}: u from {} random pairs, m by EM\n\
             over the {} blocked pairs (prior weight {}). Levels and thresholds as in\n\
             identity/matching.toml, which documents them.",
            args.random_pairs,
            pairs.len(),
            args.prior_weight
        );
        let text = estimate::to_toml(&config, &header);
        // What the server will read must parse and pass its checks.
        MatchConfig::parse(&text)?;
        std::fs::write(out, text)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// The linker's blocking keys (`identity::link::blocking_keys`) one by one, with the
/// comparisons each is made of.
/// The address keys leave out the whole address and every part of it (with the parts scored
/// apart, pairs sharing a postcode or a house key also agree on the other parts more often
/// than random pairs do, whether they match or not).
const RULES: &[(&str, &[&str])] = &[
    ("nhs", &["nhs_number"]),
    ("birth", &["birth_date"]),
    ("phonetic-year", &["family", "birth_date"]),
    ("postcode", ADDRESS),
    ("names", &["family", "given"]),
    ("line", ADDRESS),
    (
        "name-place",
        &[
            "family",
            "given",
            "address",
            "postcode",
            "town",
            "house",
            "street",
            "second_line",
        ],
    ),
];

const ADDRESS: &[&str] = &[
    "address",
    "postcode",
    "town",
    "house",
    "street",
    "second_line",
];

fn rule_keys(d: &Demographics, rule: &str) -> Vec<String> {
    match rule {
        "nhs" => d.nhs_number.iter().cloned().collect(),
        "birth" => d
            .birth_date
            .iter()
            .flat_map(|b| std::iter::once(b.clone()).chain(crate::identity::link::swapped(b)))
            .collect(),
        "phonetic-year" => match (&d.family_code, d.birth_year()) {
            (Some(c), Some(y)) => vec![format!("{c}|{y}")],
            _ => Vec::new(),
        },
        "postcode" => d.postcode.iter().cloned().collect(),
        "names" => d.name_key().into_iter().collect(),
        "line" => d.line_key().into_iter().collect(),
        "name-place" => d.name_place_key().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Pairs of records sharing a key of one kind.
fn rule_pairs(recs: &[Rec], rule: &str) -> Vec<(usize, usize)> {
    let mut blocks: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        for k in rule_keys(&r.d, rule) {
            blocks.entry(k).or_default().push(i);
        }
    }
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    for members in blocks.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                if i != j {
                    seen.insert((i.min(j), i.max(j)));
                }
            }
        }
    }
    seen.into_iter().collect()
}

/// Pairs of records sharing a blocking key (the advisory-lock keys are one per key value).
fn blocked_pairs(recs: &[Rec]) -> Vec<(usize, usize)> {
    let mut blocks: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        for k in blocking_keys(&r.d) {
            blocks.entry(k).or_default().push(i);
        }
    }
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    for members in blocks.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                seen.insert((i.min(j), i.max(j)));
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = seen.into_iter().collect();
    pairs.sort_unstable();
    pairs
}

/// Pair-level accuracy of `c` against the truth: what the online linker decides per candidate
/// pair (it also links through third records, so its recall can be a little higher).
fn report(c: &MatchConfig, recs: &[Rec], pairs: &[(usize, usize)]) {
    let mut by_person: HashMap<&str, u64> = HashMap::new();
    for r in recs {
        *by_person.entry(&r.truth).or_default() += 1;
    }
    let true_pairs: u64 = by_person
        .values()
        .map(|&n| n * n.saturating_sub(1) / 2)
        .sum();
    let mut grades: BTreeMap<(bool, &str), u64> = BTreeMap::new();
    let mut capped = 0u64;
    let mut bands: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    let mut false_high: Vec<(f64, Vec<&str>, usize, usize)> = Vec::new();
    let mut true_low: Vec<(f64, Vec<&str>, usize, usize)> = Vec::new();
    // True pairs the score alone keeps at review (not the twins rule): the pairs a new level or
    // a better estimate would have to lift to an automatic link.
    let mut true_review: Vec<(f64, Vec<&str>, usize, usize)> = Vec::new();
    // Scores of pairs that the twins rule and conflicts leave free to link: for a threshold
    // sweep.
    let mut free_true: Vec<f64> = Vec::new();
    let mut free_false: Vec<f64> = Vec::new();
    let mut blocked_true = 0u64;
    // True pairs left at review, by agreement pattern (and whether the twins rule held them):
    // what a level, an adjustment or a threshold would have to reach.
    let mut at_review: HashMap<(bool, Vec<&str>), (u64, f64)> = HashMap::new();
    for &(i, j) in pairs {
        let same = recs[i].truth == recs[j].truth;
        let s = scoring::compare_with(c, &recs[i].d, &recs[j].d);
        blocked_true += u64::from(same);
        *grades.entry((same, s.grade.code())).or_default() += 1;
        let held = s.grade == Grade::Possible && s.score >= c.thresholds.match_ && !s.conflict;
        if held && same {
            capped += 1;
        }
        if same && s.grade == Grade::Possible {
            let e = at_review
                .entry((held, s.levels.clone()))
                .or_insert((0, s.score));
            e.0 += 1;
        }
        if s.grade != Grade::Certain && !s.conflict && !held {
            if same {
                free_true.push(s.score);
            } else {
                free_false.push(s.score);
            }
        }
        if s.grade != Grade::Certain {
            let band = bands.entry((s.score / 2.0).floor() as i64 * 2).or_default();
            if same {
                band.0 += 1;
            } else {
                band.1 += 1;
            }
        }
        if same && s.grade == Grade::Possible && !held && !s.conflict {
            true_review.push((s.score, s.levels.clone(), i, j));
        }
        if !same && s.score >= c.thresholds.possible - 4.0 {
            false_high.push((s.score, s.levels, i, j));
        } else if same && s.grade == Grade::CertainlyNot {
            true_low.push((s.score, s.levels, i, j));
        }
    }
    let count = |same: bool, g: Grade| grades.get(&(same, g.code())).copied().unwrap_or(0);
    let auto = count(true, Grade::Certain) + count(true, Grade::Probable);
    let review = count(true, Grade::Possible);
    println!(
        "true pairs {true_pairs}: blocked {blocked_true}, not blocked {}; certain {}, probable \
         {}, possible {review} (twins rule {capped}), below review {}",
        true_pairs - blocked_true,
        count(true, Grade::Certain),
        count(true, Grade::Probable),
        count(true, Grade::CertainlyNot)
    );
    println!(
        "false pairs blocked: probable {} (FALSE AUTO-LINKS), possible {}, below review {}",
        count(false, Grade::Probable),
        count(false, Grade::Possible),
        count(false, Grade::CertainlyNot)
    );
    let ratio = |n: u64| n as f64 / true_pairs.max(1) as f64;
    println!(
        "pair-level recall: auto {:.4}, counting review {:.4}",
        ratio(auto),
        ratio(auto + review)
    );
    let bands: Vec<String> = bands
        .iter()
        .filter(|(_, (t, f))| *t > 0 || *f > 0)
        .map(|(b, (t, f))| format!("[{b},{}) {t}/{f}", b + 2))
        .collect();
    println!("score bands (true/false): {}", bands.join("; "));
    println!("threshold sweep (pairs free of the twins rule and conflicts):");
    for t in (4..=32).step_by(2) {
        let t = f64::from(t);
        let tp = free_true.iter().filter(|&&s| s >= t).count();
        let fp = free_false.iter().filter(|&&s| s >= t).count();
        println!("  match >= {t:4.1}: true {tp}, false {fp}");
    }
    let mut at_review: Vec<_> = at_review.into_iter().collect();
    at_review.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(b.1.1.total_cmp(&a.1.1)));
    println!("true pairs at review, commonest agreement patterns:");
    for ((held, levels), (n, score)) in at_review.iter().take(16) {
        let why = if *held { "twins rule" } else { "score" };
        println!("  {n:5} ({why}, e.g. {score:.1}) {levels:?}");
    }
    // Each pair with its score, levels and both records, highest first.
    let list = |title: String, pairs: &mut Vec<(f64, Vec<&str>, usize, usize)>, most: usize| {
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        println!("{title}");
        for (s, levels, i, j) in pairs.iter().take(most) {
            println!("  {s:6.2} {levels:?}");
            println!("         {}", show(&recs[*i].d));
            println!("         {}", show(&recs[*j].d));
        }
    };
    list("highest-scoring false pairs:".into(), &mut false_high, 12);
    let title = format!(
        "true pairs at review by their score (highest first), of {}:",
        true_review.len()
    );
    list(title, &mut true_review, 20);
    let title = format!(
        "true pairs below review (highest first), of {}:",
        true_low.len()
    );
    list(title, &mut true_low, 12);
    let blocked: HashSet<(usize, usize)> = pairs.iter().copied().collect();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        members.entry(&r.truth).or_default().push(i);
    }
    let mut shown = 0;
    println!("true pairs sharing no blocking key (examples):");
    'outer: for m in members.values() {
        for (x, &i) in m.iter().enumerate() {
            for &j in &m[x + 1..] {
                if !blocked.contains(&(i.min(j), i.max(j))) {
                    println!("  {}", show(&recs[i].d));
                    println!("  {}", show(&recs[j].d));
                    shown += 1;
                    if shown == 20 {
                        break 'outer;
                    }
                }
            }
        }
    }
}

fn show(d: &Demographics) -> String {
    let f = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
    format!(
        "{} {} | {} | {} | {} | {} / {} | {} | {}",
        f(&d.given),
        f(&d.family),
        f(&d.birth_date),
        f(&d.sex),
        f(&d.postcode),
        f(&d.address_line),
        f(&d.address_line2),
        f(&d.town),
        f(&d.nhs_number)
    )
}
