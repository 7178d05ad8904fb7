//! A compact binary form of index values, stored per document in a fast field, for the
//! predicates terms cannot decide (a date range contained in another, the pairs of a composite).

use super::extract::IndexValue;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn value(&mut self, v: &IndexValue) {
        match v {
            IndexValue::String { normalised, exact } => {
                self.u8(1);
                self.str(normalised);
                self.str(exact);
            }
            IndexValue::Token {
                system,
                code,
                text,
                of_type,
            } => {
                self.u8(2);
                self.opt(system.as_deref());
                self.opt(code.as_deref());
                self.opt(text.as_deref());
                match of_type {
                    None => self.u8(0),
                    Some((s, c)) => {
                        self.u8(1);
                        self.str(s);
                        self.str(c);
                    }
                }
            }
            IndexValue::Reference {
                resource_type,
                id,
                url,
                identifier,
                version,
            } => {
                self.u8(3);
                self.opt(resource_type.as_deref());
                self.opt(id.as_deref());
                self.str(url);
                match identifier {
                    None => self.u8(0),
                    Some((s, v)) => {
                        self.u8(1);
                        self.opt(s.as_deref());
                        self.str(v);
                    }
                }
                self.opt(version.as_deref());
            }
            IndexValue::Date { low, high } => {
                self.u8(4);
                self.i64(*low);
                self.i64(*high);
            }
            IndexValue::Number { value, low, high } => {
                self.u8(5);
                self.f64(*value);
                self.f64(*low);
                self.f64(*high);
            }
            IndexValue::Quantity {
                value,
                low,
                high,
                system,
                code,
                unit,
            } => {
                self.u8(6);
                self.f64(*value);
                self.f64(*low);
                self.f64(*high);
                self.opt(system.as_deref());
                self.opt(code.as_deref());
                self.opt(unit.as_deref());
            }
            IndexValue::Uri(u) => {
                self.u8(7);
                self.str(u);
            }
            IndexValue::Composite(components) => {
                self.u8(8);
                self.u32(components.len() as u32);
                for component in components {
                    self.u32(component.len() as u32);
                    for v in component {
                        self.value(v);
                    }
                }
            }
            IndexValue::Position {
                latitude,
                longitude,
            } => {
                self.u8(9);
                self.f64(*latitude);
                self.f64(*longitude);
            }
        }
    }
}

/// Packs `(parameter code, values)` groups.
pub fn pack<'a>(groups: impl Iterator<Item = (&'a str, &'a [IndexValue])>) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    for (code, values) in groups {
        w.str(code);
        let mut body = Writer(Vec::new());
        body.u32(values.len() as u32);
        for v in values {
            body.value(v);
        }
        w.u32(body.0.len() as u32);
        w.0.extend_from_slice(&body.0);
    }
    w.0
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Option<f64> {
        self.take(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn opt(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.str()?.to_string())),
        }
    }
    fn value(&mut self) -> Option<IndexValue> {
        Some(match self.u8()? {
            1 => IndexValue::String {
                normalised: self.str()?.to_string(),
                exact: self.str()?.to_string(),
            },
            2 => IndexValue::Token {
                system: self.opt()?,
                code: self.opt()?,
                text: self.opt()?,
                of_type: match self.u8()? {
                    0 => None,
                    _ => Some((self.str()?.to_string(), self.str()?.to_string())),
                },
            },
            3 => IndexValue::Reference {
                resource_type: self.opt()?,
                id: self.opt()?,
                url: self.str()?.to_string(),
                identifier: match self.u8()? {
                    0 => None,
                    _ => Some((self.opt()?, self.str()?.to_string())),
                },
                version: self.opt()?,
            },
            4 => IndexValue::Date {
                low: self.i64()?,
                high: self.i64()?,
            },
            5 => IndexValue::Number {
                value: self.f64()?,
                low: self.f64()?,
                high: self.f64()?,
            },
            6 => IndexValue::Quantity {
                value: self.f64()?,
                low: self.f64()?,
                high: self.f64()?,
                system: self.opt()?,
                code: self.opt()?,
                unit: self.opt()?,
            },
            7 => IndexValue::Uri(self.str()?.to_string()),
            8 => {
                let components = self.u32()?;
                let mut out = Vec::with_capacity(components as usize);
                for _ in 0..components {
                    let n = self.u32()?;
                    let mut values = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        values.push(self.value()?);
                    }
                    out.push(values);
                }
                IndexValue::Composite(out)
            }
            9 => IndexValue::Position {
                latitude: self.f64()?,
                longitude: self.f64()?,
            },
            _ => return None,
        })
    }
}

/// The values packed for `code`, or none. Other groups are skipped without decoding.
pub fn unpack(bytes: &[u8], code: &str) -> Vec<IndexValue> {
    let mut r = Reader(bytes);
    while let Some(c) = r.str() {
        let Some(len) = r.u32() else { break };
        let Some(body) = r.take(len as usize) else {
            break;
        };
        if c == code {
            let mut b = Reader(body);
            let n = b.u32().unwrap_or(0);
            return (0..n).map_while(|_| b.value()).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_and_are_found_by_code() {
        let dates = vec![
            IndexValue::Date { low: 1, high: 2 },
            IndexValue::Date { low: -5, high: 9 },
        ];
        let composite = vec![IndexValue::Composite(vec![
            vec![IndexValue::Token {
                system: Some("http://loinc.org".into()),
                code: Some("8480-6".into()),
                text: None,
                of_type: None,
            }],
            vec![IndexValue::Quantity {
                value: 120.0,
                low: 119.5,
                high: 120.5,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("mm[Hg]".into()),
                unit: None,
            }],
        ])];
        let bytes = pack(
            [
                ("date", dates.as_slice()),
                ("code-value-quantity", composite.as_slice()),
            ]
            .into_iter(),
        );
        assert_eq!(unpack(&bytes, "date"), dates);
        assert_eq!(unpack(&bytes, "code-value-quantity"), composite);
        assert!(unpack(&bytes, "missing").is_empty());
    }
}
