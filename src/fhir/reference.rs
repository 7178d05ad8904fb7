//! `Reference.reference` strings: what kind of target they name.

use super::id::is_valid_id;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceKind<'a> {
    /// `#id` — a contained resource.
    Contained(&'a str),
    /// `Type/id` or `Type/id/_history/vid` (relative to this server).
    Relative {
        resource_type: &'a str,
        id: &'a str,
        version: Option<&'a str>,
    },
    /// `Type?search` — a conditional reference, only meaningful inside a transaction.
    Conditional {
        resource_type: &'a str,
        query: &'a str,
    },
    /// `urn:uuid:…` / `urn:oid:…` — a Bundle-local identity.
    Urn(&'a str),
    /// Any absolute URL (possibly this server's base).
    Absolute(&'a str),
    Other(&'a str),
}

fn looks_like_type(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

pub fn classify(reference: &str) -> ReferenceKind<'_> {
    if let Some(id) = reference.strip_prefix('#') {
        return ReferenceKind::Contained(id);
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return ReferenceKind::Urn(reference);
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return ReferenceKind::Absolute(reference);
    }
    if let Some((resource_type, query)) = reference.split_once('?')
        && looks_like_type(resource_type)
    {
        return ReferenceKind::Conditional {
            resource_type,
            query,
        };
    }
    let parts: Vec<&str> = reference.split('/').collect();
    match parts.as_slice() {
        [t, id] if looks_like_type(t) && is_valid_id(id) => ReferenceKind::Relative {
            resource_type: t,
            id,
            version: None,
        },
        [t, id, "_history", v] if looks_like_type(t) && is_valid_id(id) && is_valid_id(v) => {
            ReferenceKind::Relative {
                resource_type: t,
                id,
                version: Some(v),
            }
        }
        _ => ReferenceKind::Other(reference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_kinds() {
        assert_eq!(
            classify("Patient/123"),
            ReferenceKind::Relative {
                resource_type: "Patient",
                id: "123",
                version: None
            }
        );
        assert_eq!(
            classify("Patient/1/_history/2"),
            ReferenceKind::Relative {
                resource_type: "Patient",
                id: "1",
                version: Some("2")
            }
        );
        assert_eq!(
            classify("Practitioner?identifier=http://x|1"),
            ReferenceKind::Conditional {
                resource_type: "Practitioner",
                query: "identifier=http://x|1"
            }
        );
        assert_eq!(classify("#c1"), ReferenceKind::Contained("c1"));
        assert!(matches!(classify("urn:uuid:abc"), ReferenceKind::Urn(_)));
        assert!(matches!(
            classify("https://x/Patient/1"),
            ReferenceKind::Absolute(_)
        ));
        assert!(matches!(classify("patient/1"), ReferenceKind::Other(_)));
    }
}
