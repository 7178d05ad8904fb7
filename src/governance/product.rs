//! The API product definition (`governance/api.toml`): request costs for throttling and the
//! lifecycle of shcr's own operations, headers and media types.

use serde::Deserialize;
use time::macros::format_description;
use time::{Date, OffsetDateTime, Time};

const BUILTIN: &str = include_str!("../../governance/api.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    pub base: u32,
    pub write: u32,
    pub search: u32,
    pub include: u32,
    pub per_100_results: u32,
    pub body_per_16_kib: u32,
    pub everything: u32,
    pub history: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    Operation,
    Parameter,
    Header,
    MediaType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Deprecated,
    Retired,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Deprecated => "deprecated",
            Status::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    #[serde(rename = "match")]
    pub kind: MatchKind,
    pub status: Status,
    pub since: String,
    pub deprecated: Option<String>,
    pub sunset: Option<String>,
    pub replacement: Option<String>,
    pub summary: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub costs: Costs,
    #[serde(default)]
    pub lifecycle: Vec<Feature>,
}

fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).ok()
}

impl Feature {
    fn deprecated_at(&self) -> Option<OffsetDateTime> {
        self.deprecated
            .as_deref()
            .and_then(parse_date)
            .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
    }

    fn sunset_at(&self) -> Option<OffsetDateTime> {
        self.sunset
            .as_deref()
            .and_then(parse_date)
            .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
    }

    /// `Deprecation: @<unix seconds>` (RFC 9745).
    pub fn deprecation_header(&self) -> Option<String> {
        self.deprecated_at()
            .map(|t| format!("@{}", t.unix_timestamp()))
    }

    /// `Sunset: <HTTP-date>` (RFC 8594).
    pub fn sunset_header(&self) -> Option<String> {
        let t = self.sunset_at()?;
        let f = format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        t.format(f).ok()
    }

    /// Retired (or past its sunset at `now`): requests using it are refused.
    pub fn is_retired(&self, now: OffsetDateTime) -> bool {
        self.status == Status::Retired || self.sunset_at().is_some_and(|s| now >= s)
    }

    /// Why a request using this retired feature is refused, and what to do instead.
    pub fn refusal(&self) -> String {
        format!(
            "'{}' was retired on {}{} (see /docs#lifecycle)",
            self.name,
            self.sunset.as_deref().unwrap_or("an earlier date"),
            self.replacement
                .as_deref()
                .map(|r| format!("; use {r}"))
                .unwrap_or_default()
        )
    }

    /// The warning a consumer sees when it uses this feature.
    pub fn warning(&self) -> String {
        let mut text = format!("'{}' is {}", self.name, self.status.code());
        if let Some(d) = &self.deprecated {
            text.push_str(&format!(" since {d}"));
        }
        if let Some(s) = &self.sunset {
            text.push_str(&format!(" and will stop working on {s}"));
        }
        if let Some(r) = &self.replacement {
            text.push_str(&format!("; use {r} instead"));
        }
        text.push_str(" (see /docs#lifecycle)");
        text
    }
}

/// What a request looks like to the product rules, gathered once by the middleware.
#[derive(Debug, Default)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub interaction: &'a str,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    pub header_names: Vec<String>,
    /// Accept, Content-Type and `_format` media types, lower case, without parameters.
    pub media_types: Vec<String>,
    pub body_bytes: u64,
}

impl Product {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Product> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            None => BUILTIN.to_string(),
        };
        let product: Product =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("API product file: {e}"))?;
        for f in &product.lifecycle {
            if f.status != Status::Active && (f.deprecated_at().is_none() || f.sunset.is_none()) {
                anyhow::bail!(
                    "API product file: {} is {} but has no deprecated/sunset date (YYYY-MM-DD)",
                    f.name,
                    f.status.code()
                );
            }
            if f.sunset.is_some() && f.sunset_at().is_none() {
                anyhow::bail!(
                    "API product file: {} has a sunset that is not YYYY-MM-DD",
                    f.name
                );
            }
        }
        Ok(product)
    }

    pub fn builtin() -> &'static Product {
        static BUILT: std::sync::LazyLock<Product> =
            std::sync::LazyLock::new(|| Product::load(None).expect("built-in API product file"));
        &BUILT
    }

    /// Tokens a request takes from its client's bucket.
    pub fn cost(&self, r: &RequestFacts) -> u32 {
        let c = &self.costs;
        let mut cost = c.base;
        match r.interaction {
            "create" | "update" | "delete" | "conditional-update" | "conditional-delete" => {
                cost += c.write
            }
            "search-type" | "search-system" | "search-compartment" => {
                cost += c.search;
                let includes = r
                    .query
                    .iter()
                    .filter(|(k, _)| k.starts_with("_include") || k.starts_with("_revinclude"))
                    .count() as u32;
                cost += includes * c.include;
                if let Some(count) = r
                    .query
                    .iter()
                    .filter(|(k, _)| k == "_count")
                    .filter_map(|(_, v)| v.parse::<u32>().ok())
                    .max()
                {
                    cost += count.saturating_sub(100).div_ceil(100) * c.per_100_results;
                }
            }
            "history-type" | "history-system" => cost += c.history,
            "transaction" | "process-message" | "validate" => {
                cost += (r.body_bytes / (16 * 1024)) as u32 * c.body_per_16_kib
            }
            _ => {}
        }
        if r.path.ends_with("/$everything") {
            cost += c.everything;
        }
        cost
    }

    /// The deprecated or retired features a request uses.
    pub fn used_deprecated<'p>(&'p self, r: &RequestFacts) -> Vec<&'p Feature> {
        self.lifecycle
            .iter()
            .filter(|f| f.status != Status::Active)
            .filter(|f| match f.kind {
                MatchKind::Operation => r.path.split('/').any(|s| s == f.name),
                MatchKind::Parameter => r
                    .query
                    .iter()
                    .any(|(k, _)| k.split(':').next() == Some(f.name.as_str())),
                MatchKind::Header => r
                    .header_names
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&f.name)),
                MatchKind::MediaType => r
                    .media_types
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&f.name)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(interaction: &'a str, path: &'a str, query: &[(&str, &str)]) -> RequestFacts<'a> {
        RequestFacts {
            method: "GET",
            interaction,
            path,
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RequestFacts::default()
        }
    }

    #[test]
    fn heavy_searches_cost_more_than_reads() {
        let p = Product::builtin();
        let read = p.cost(&facts("read", "/fhir/Patient/1", &[]));
        let search = p.cost(&facts("search-type", "/fhir/Patient", &[("name", "x")]));
        let heavy = p.cost(&facts(
            "search-type",
            "/fhir/Patient",
            &[
                ("_include", "Patient:organization"),
                ("_revinclude", "Observation:subject"),
                ("_count", "1000"),
            ],
        ));
        let everything = p.cost(&facts("other", "/fhir/Patient/1/$everything", &[]));
        assert_eq!(read, 1);
        assert!(search > read);
        assert!(heavy >= search + 4 + 9, "{heavy}");
        assert!(everything > search);
    }

    #[test]
    fn a_feature_is_retired_at_its_sunset() {
        let f = Product::builtin()
            .lifecycle
            .iter()
            .find(|f| f.name == "application/json+fhir")
            .unwrap();
        let before = time::macros::datetime!(2027-06-29 23:59 UTC);
        let after = time::macros::datetime!(2027-06-30 00:00 UTC);
        assert!(!f.is_retired(before));
        assert!(f.is_retired(after));
        assert!(f.refusal().contains("application/fhir+json"));
    }

    #[test]
    fn the_old_media_type_is_deprecated_with_a_sunset() {
        let p = Product::builtin();
        let mut r = facts("read", "/fhir/Patient/1", &[]);
        r.media_types = vec!["application/json+fhir".into()];
        let used = p.used_deprecated(&r);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].deprecation_header().unwrap(), "@1795651200");
        assert_eq!(
            used[0].sunset_header().unwrap(),
            "Wed, 30 Jun 2027 00:00:00 GMT"
        );
        assert!(used[0].warning().contains("application/fhir+json"));
    }
}
