//! Logical ids and version ids as FHIR R4 defines them.

/// `[A-Za-z0-9\-\.]{1,64}`: the R4 `id` datatype.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A new server-assigned logical id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Parses a weak or strong ETag (`W/"3"`, `"3"`) or a bare version id into a version number.
pub fn parse_etag_version(etag: &str) -> Option<i64> {
    let trimmed = etag.trim();
    let trimmed = trimmed.strip_prefix("W/").unwrap_or(trimmed);
    let trimmed = trimmed.trim_matches('"');
    trimmed.parse::<i64>().ok().filter(|v| *v > 0)
}

pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_r4_pattern() {
        assert!(is_valid_id("abc-123.X"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("$match"));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(is_valid_id(&"a".repeat(64)));
    }

    #[test]
    fn etags_parse_weak_strong_and_bare() {
        assert_eq!(parse_etag_version("W/\"3\""), Some(3));
        assert_eq!(parse_etag_version("\"12\""), Some(12));
        assert_eq!(parse_etag_version("7"), Some(7));
        assert_eq!(parse_etag_version("W/\"x\""), None);
        assert_eq!(parse_etag_version("W/\"0\""), None);
    }
}
