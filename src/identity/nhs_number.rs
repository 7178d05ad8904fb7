//! The NHS number: ten digits whose last is a modulus-11 check digit.
//!
//! An [`NhsNumber`] can only be obtained by parsing (or from a nine-digit stem, which computes
//! the check digit), so any value of this type passed the check. A mistyped number is the most
//! common way two people's records get merged, which is why the check is not optional.

use std::fmt;
use std::str::FromStr;

/// FHIR identifier system for NHS numbers (England and Wales).
pub const SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A valid NHS number, stored as ten ASCII digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber([u8; 10]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("an NHS number has 10 digits, optionally written 3-3-4 with spaces or dashes")]
    Format,
    #[error("the check digit does not match: this is not a valid NHS number")]
    CheckDigitMismatch,
    #[error("the first nine digits give check digit 10, so no NHS number starts with them")]
    CheckDigitTen,
    #[error("an NHS number stem has exactly 9 digits")]
    StemOutOfRange,
}

impl NhsNumber {
    /// Parses `9434765919`, `943 476 5919` or `943-476-5919` (surrounding whitespace ignored).
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let digits = digits_of(input.trim()).ok_or(NhsNumberError::Format)?;
        let stem: [u8; 9] = digits[..9].try_into().expect("ten digits");
        match check_digit(&stem) {
            None => Err(NhsNumberError::CheckDigitTen),
            Some(check) if check == digits[9] - b'0' => Ok(Self(digits)),
            Some(_) => Err(NhsNumberError::CheckDigitMismatch),
        }
    }

    /// Builds the number whose first nine digits are `stem` (100000000..=999999999), appending
    /// its check digit. Fails for the one stem in eleven whose check digit would be 10.
    pub fn from_stem(stem: u32) -> Result<Self, NhsNumberError> {
        if !(100_000_000..=999_999_999).contains(&stem) {
            return Err(NhsNumberError::StemOutOfRange);
        }
        let mut digits = [0u8; 10];
        let text = stem.to_string();
        digits[..9].copy_from_slice(text.as_bytes());
        let stem_digits: [u8; 9] = digits[..9].try_into().expect("nine digits");
        let check = check_digit(&stem_digits).ok_or(NhsNumberError::CheckDigitTen)?;
        digits[9] = b'0' + check;
        Ok(Self(digits))
    }

    /// The ten digits without separators, as stored and transmitted.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits")
    }
}

/// Modulus 11 over the first nine digits with weights 10..=2; `None` when the result is 10,
/// which is never issued.
fn check_digit(stem: &[u8; 9]) -> Option<u8> {
    let sum: u32 = stem
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        check => Some(check as u8),
    }
}

/// The ten digits of `s` if it is `dddddddddd` or `ddd?ddd?dddd` with `?` a space or dash.
fn digits_of(s: &str) -> Option<[u8; 10]> {
    let bytes = s.as_bytes();
    let picked: Vec<u8> = match bytes.len() {
        10 => bytes.to_vec(),
        12 => {
            let sep = bytes[3];
            if !(sep == b' ' || sep == b'-') || bytes[7] != sep {
                return None;
            }
            bytes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 7)
                .map(|(_, b)| *b)
                .collect()
        }
        _ => return None,
    };
    if !picked.iter().all(u8::is_ascii_digit) {
        return None;
    }
    picked.try_into().ok()
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

/// Displays in the 3-3-4 form people read aloud and compare (`943 476 5919`).
impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(f, "{} {} {}", &s[..3], &s[3..6], &s[6..])
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NhsNumber({})", self.as_str())
    }
}

impl serde::Serialize for NhsNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for NhsNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_nhs_data_dictionary_is_valid() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(n.as_str(), "9434765919");
        assert_eq!(n.to_string(), "943 476 5919");
    }

    #[test]
    fn wrong_check_digit_is_rejected() {
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigitMismatch)
        );
    }

    #[test]
    fn stem_whose_check_digit_is_ten_is_rejected() {
        // Found by search so the test states the rule rather than a hand calculation.
        let stem = (100_000_000u32..)
            .find(|s| {
                let d: [u8; 9] = s.to_string().as_bytes().try_into().unwrap();
                check_digit(&d).is_none()
            })
            .unwrap();
        assert_eq!(
            NhsNumber::from_stem(stem),
            Err(NhsNumberError::CheckDigitTen)
        );
        for last in 0..=9 {
            let text = format!("{stem}{last}");
            assert_eq!(NhsNumber::parse(&text), Err(NhsNumberError::CheckDigitTen));
        }
    }

    #[test]
    fn spaced_and_dashed_forms_are_accepted() {
        for s in ["943 476 5919", "943-476-5919", "  9434765919 "] {
            assert_eq!(NhsNumber::parse(s).unwrap().as_str(), "9434765919", "{s}");
        }
    }

    #[test]
    fn malformed_input_is_rejected() {
        for s in [
            "",
            "943476591",
            "94347659190",
            "943 4765919",
            "943-476 5919",
            "94 3476 5919",
            "943476591X",
            "９４３４７６５９１９",
        ] {
            assert_eq!(NhsNumber::parse(s), Err(NhsNumberError::Format), "{s}");
        }
    }

    #[test]
    fn from_stem_appends_the_check_digit() {
        assert_eq!(
            NhsNumber::from_stem(943_476_591).unwrap().as_str(),
            "9434765919"
        );
        assert_eq!(
            NhsNumber::from_stem(99_999_999),
            Err(NhsNumberError::StemOutOfRange)
        );
    }

    #[test]
    fn every_stem_in_the_test_range_round_trips_or_is_check_ten() {
        let mut valid = 0;
        for stem in 999_000_000..999_010_000 {
            match NhsNumber::from_stem(stem) {
                Ok(n) => {
                    valid += 1;
                    assert_eq!(NhsNumber::parse(n.as_str()), Ok(n));
                    assert!(n.as_str().starts_with("999"));
                }
                Err(e) => assert_eq!(e, NhsNumberError::CheckDigitTen),
            }
        }
        // About one stem in eleven is unusable.
        assert!((8_900..9_200).contains(&valid), "{valid}");
    }

    #[test]
    fn serde_round_trip_checks_the_digit() {
        let n = NhsNumber::parse("9434765919").unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"9434765919\"");
        assert_eq!(serde_json::from_str::<NhsNumber>(&json).unwrap(), n);
        assert!(serde_json::from_str::<NhsNumber>("\"9434765918\"").is_err());
    }
}
