//! Search criteria of conditional interactions (`If-None-Exist`, conditional update/delete,
//! conditional references). They are answered inside the writing transaction from the store's
//! identifier table, so they see exactly the committed state they lock against.

use crate::fhir::id::is_valid_id;
use crate::fhir::outcome::IssueType;
use crate::store::IdentifierQuery;

use super::error::Error;

/// Parameters conditional interactions accept today; everything else is refused rather than
/// silently ignored, because ignoring a criterion would widen the match.
pub const SUPPORTED_PARAMETERS: &[&str] = &["_id", "identifier"];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Criteria {
    pub resource_type: String,
    /// `_id=a,b` (OR); repeated `_id` parameters AND together.
    pub ids: Vec<Vec<String>>,
    /// Each inner list is one `identifier` parameter (OR of its comma-separated values);
    /// the lists AND together.
    pub identifiers: Vec<Vec<IdentifierQuery>>,
}

/// Splits on commas that are not escaped with a backslash, unescaping `\,` `\|` `\\`.
fn split_values(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if next != ',' && next != '|' && next != '\\' && next != '$' {
                        current.push('\\');
                    }
                    current.push(next);
                }
            }
            ',' => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Splits `system|code` on the first unescaped `|`.
fn split_token(value: &str) -> (Option<String>, String) {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '|' if !escaped => {
                return (Some(value[..i].to_string()), value[i + 1..].to_string());
            }
            _ => escaped = false,
        }
    }
    (None, value.to_string())
}

impl Criteria {
    /// Parses `identifier=sys|val&_id=x` for `resource_type`.
    pub fn parse(resource_type: &str, query: &str) -> Result<Criteria, Error> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
            Error::invalid(
                IssueType::Invalid,
                format!("conditional criteria '{query}' are not a valid query string: {e}"),
            )
        })?;
        let mut criteria = Criteria {
            resource_type: resource_type.to_string(),
            ids: Vec::new(),
            identifiers: Vec::new(),
        };
        for (name, value) in pairs {
            if value.is_empty() {
                return Err(Error::invalid(
                    IssueType::Invalid,
                    format!("conditional criteria parameter '{name}' has no value"),
                ));
            }
            match name.as_str() {
                "_id" => {
                    let ids = split_values(&value);
                    if let Some(bad) = ids.iter().find(|id| !is_valid_id(id)) {
                        return Err(Error::invalid(
                            IssueType::Invalid,
                            format!("'{bad}' in _id is not a valid FHIR id"),
                        ));
                    }
                    criteria.ids.push(ids);
                }
                "identifier" => {
                    let group = split_values(&value)
                        .into_iter()
                        .map(|v| {
                            let (system, value) = split_token(&v);
                            IdentifierQuery {
                                resource_type: resource_type.to_string(),
                                system,
                                value: if value.is_empty() { None } else { Some(value) },
                            }
                        })
                        .collect::<Vec<_>>();
                    if group
                        .iter()
                        .any(|q| q.system.is_none() && q.value.is_none())
                    {
                        return Err(Error::invalid(
                            IssueType::Invalid,
                            "identifier criteria need a value or a system",
                        ));
                    }
                    criteria.identifiers.push(group);
                }
                other => {
                    return Err(Error::NotSupported(format!(
                        "conditional criteria parameter '{other}' is not supported; \
                         conditional interactions accept {}",
                        SUPPORTED_PARAMETERS.join(", ")
                    )));
                }
            }
        }
        if criteria.ids.is_empty() && criteria.identifiers.is_empty() {
            return Err(Error::invalid(
                IssueType::Invalid,
                "conditional criteria are empty; they would match every resource",
            ));
        }
        Ok(criteria)
    }

    pub fn identifier_queries(&self) -> impl Iterator<Item = &IdentifierQuery> {
        self.identifiers.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_criteria_parse_system_and_value() {
        let c = Criteria::parse(
            "Patient",
            "identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9434765919",
        )
        .unwrap();
        assert_eq!(
            c.identifiers,
            vec![vec![IdentifierQuery {
                resource_type: "Patient".into(),
                system: Some("https://fhir.nhs.uk/Id/nhs-number".into()),
                value: Some("9434765919".into()),
            }]]
        );
    }

    #[test]
    fn identifier_forms_any_system_no_system_and_system_only() {
        let c = Criteria::parse("Patient", "identifier=123,|456,http://x|").unwrap();
        let g = &c.identifiers[0];
        assert_eq!(g[0].system, None);
        assert_eq!(g[0].value.as_deref(), Some("123"));
        assert_eq!(g[1].system.as_deref(), Some(""));
        assert_eq!(g[2].system.as_deref(), Some("http://x"));
        assert_eq!(g[2].value, None);
    }

    #[test]
    fn escaped_separators_stay_in_values() {
        let c = Criteria::parse("Patient", "identifier=a\\,b").unwrap();
        assert_eq!(c.identifiers[0].len(), 1);
        assert_eq!(c.identifiers[0][0].value.as_deref(), Some("a,b"));
    }

    #[test]
    fn unsupported_and_empty_criteria_are_refused() {
        assert!(matches!(
            Criteria::parse("Patient", "name=smith"),
            Err(Error::NotSupported(_))
        ));
        assert!(matches!(
            Criteria::parse("Patient", ""),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Criteria::parse("Patient", "_id=bad$id"),
            Err(Error::Invalid(_))
        ));
    }
}
