//! Field selectors (`fieldSelector`): `=`, `==`, `!=` terms with `\` escapes.

use super::SelectorError;

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    /// Field path, e.g. `status.phase`.
    pub field: String,
    /// Compared value.
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        if s.is_empty() {
            return Ok(Self(terms));
        }
        for raw in split_unescaped(s, ',') {
            if raw.is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some(i) = find_unescaped(&raw, "!=") {
                (&raw[..i], &raw[i + 2..], true)
            } else if let Some(i) = find_unescaped(&raw, "==") {
                (&raw[..i], &raw[i + 2..], false)
            } else if let Some(i) = find_unescaped(&raw, "=") {
                (&raw[..i], &raw[i + 1..], false)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{raw}'"
                )));
            };
            terms.push(FieldTerm {
                field: unescape(field),
                value: unescape(value),
                negated,
            });
        }
        Ok(Self(terms))
    }

    /// True when every term holds; `get` answers a field's value (missing = empty).
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|t| {
            let v = get(&t.field).unwrap_or("");
            (v == t.value) != t.negated
        })
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_support_escapes_and_negation() {
        let f = FieldSelector::parse(r"metadata.name=a\,b,status.phase!=Running").unwrap();
        assert_eq!(f.0[0].value, "a,b");
        let get = |k: &str| match k {
            "metadata.name" => Some("a,b"),
            "status.phase" => Some("Pending"),
            _ => None,
        };
        assert!(f.matches(get));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
