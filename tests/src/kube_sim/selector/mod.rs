//! Label and field selectors as the API server parses and matches them.
//!
//! Owns the selector grammar of `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists,
//! `!key`, `>`, `<`) and `fieldSelector` (`=`, `==`, `!=` with `\` escapes). Pure code: it
//! knows nothing about which fields a resource supports (the caller checks that).

use std::collections::BTreeMap;

use super::validation::{is_label_value, is_qualified_name};

mod field;

pub use field::{FieldSelector, FieldTerm};

/// A selector that failed to parse; the message goes into a 400 BadRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError(pub String);

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key` (the label is present).
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key=v`, `key==v`, `key in (v, ...)`.
    In(String, Vec<String>),
    /// `key!=v`, `key notin (v, ...)`.
    NotIn(String, Vec<String>),
    /// `key>n`.
    Gt(String, i64),
    /// `key<n`.
    Lt(String, i64),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Self::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    End,
}

impl Token {
    fn show(&self) -> String {
        match self {
            Self::Ident(s) => s.clone(),
            Self::Not => "!".into(),
            Self::Eq => "=".into(),
            Self::DoubleEq => "==".into(),
            Self::NotEq => "!=".into(),
            Self::In => "in".into(),
            Self::NotIn => "notin".into(),
            Self::Open => "(".into(),
            Self::Close => ")".into(),
            Self::Comma => ",".into(),
            Self::Gt => ">".into(),
            Self::Lt => "<".into(),
            Self::End => String::new(),
        }
    }
}

fn lex(s: &str) -> Vec<Token> {
    let special = |c: char| matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<');
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if special(c) {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let (tok, len) = match two.as_str() {
                "==" => (Token::DoubleEq, 2),
                "!=" => (Token::NotEq, 2),
                _ => (
                    match c {
                        '!' => Token::Not,
                        '=' => Token::Eq,
                        '(' => Token::Open,
                        ')' => Token::Close,
                        ',' => Token::Comma,
                        '>' => Token::Gt,
                        _ => Token::Lt,
                    },
                    1,
                ),
            };
            out.push(tok);
            i += len;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !special(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident(word),
            });
        }
    }
    out.push(Token::End);
    out
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn err(found: &Token, expected: &str) -> SelectorError {
        SelectorError(format!(
            "unable to parse requirement: found '{}', expected: {expected}",
            found.show()
        ))
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let negated = if *self.peek() == Token::Not {
            self.next();
            true
        } else {
            false
        };
        let key = match self.next() {
            Token::Ident(k) => k,
            other => return Err(Self::err(&other, "identifier")),
        };
        check_key(&key)?;
        if negated {
            return match self.peek() {
                Token::Comma | Token::End => Ok(Requirement::DoesNotExist(key)),
                other => Err(Self::err(other, "',' or 'end of string'")),
            };
        }
        match self.next() {
            Token::Comma => {
                self.pos -= 1;
                Ok(Requirement::Exists(key))
            }
            Token::End => {
                self.pos -= 1;
                Ok(Requirement::Exists(key))
            }
            op @ (Token::Eq | Token::DoubleEq | Token::NotEq) => {
                let value = match self.peek() {
                    Token::Ident(v) => {
                        let v = v.clone();
                        self.next();
                        v
                    }
                    Token::Comma | Token::End => String::new(),
                    other => return Err(Self::err(other, "identifier")),
                };
                check_value(&value)?;
                Ok(if op == Token::NotEq {
                    Requirement::NotIn(key, vec![value])
                } else {
                    Requirement::In(key, vec![value])
                })
            }
            op @ (Token::Gt | Token::Lt) => {
                let value = match self.next() {
                    Token::Ident(v) => v,
                    other => return Err(Self::err(&other, "identifier")),
                };
                let n: i64 = value
                    .parse()
                    .map_err(|_| SelectorError(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {value:?}")))?;
                Ok(if op == Token::Gt {
                    Requirement::Gt(key, n)
                } else {
                    Requirement::Lt(key, n)
                })
            }
            op @ (Token::In | Token::NotIn) => {
                match self.next() {
                    Token::Open => {}
                    other => return Err(Self::err(&other, "'('")),
                }
                let mut values = Vec::new();
                loop {
                    match self.next() {
                        Token::Ident(v) => {
                            check_value(&v)?;
                            values.push(v);
                        }
                        Token::Comma => {
                            // an empty value between commas is the empty string
                            values.push(String::new());
                            continue;
                        }
                        Token::Close if values.is_empty() => {
                            return Err(SelectorError(
                                "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty".into(),
                            ));
                        }
                        Token::Close => break,
                        other => return Err(Self::err(&other, "identifier")),
                    }
                    match self.next() {
                        Token::Comma => {}
                        Token::Close => break,
                        other => return Err(Self::err(&other, "',' or ')'")),
                    }
                }
                Ok(if op == Token::In {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                })
            }
            other => Err(Self::err(&other, "'=', '!=', '==', 'in', notin'")),
        }
    }
}

fn check_key(key: &str) -> Result<(), SelectorError> {
    let msgs = is_qualified_name(key);
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: key: Invalid value: {key:?}: {}",
            msgs.join("; ")
        )))
    }
}

fn check_value(value: &str) -> Result<(), SelectorError> {
    let msgs = is_label_value(value);
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: values[0][key]: Invalid value: {value:?}: {}",
            msgs.join("; ")
        )))
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            tokens: lex(s),
            pos: 0,
        };
        let mut reqs = Vec::new();
        if *p.peek() == Token::End {
            return Ok(Self(reqs));
        }
        loop {
            reqs.push(p.requirement()?);
            match p.next() {
                Token::End => break,
                Token::Comma => {}
                other => return Err(Parser::err(&other, "',' or 'end of string'")),
            }
        }
        Ok(Self(reqs))
    }

    /// True when every requirement holds.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// `(key, value)` pairs every match must carry; an index can narrow candidates with them.
    pub fn required_pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .filter_map(|r| match r {
                Requirement::In(k, vs) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn matches(sel: &str, l: &[(&str, &str)]) -> bool {
        LabelSelector::parse(sel).unwrap().matches(&labels(l))
    }

    #[test]
    fn every_operator_matches_like_kubernetes() {
        let l = [("app", "screwdriver"), ("tier", "builds"), ("n", "5")];
        assert!(matches("app=screwdriver", &l));
        assert!(matches("app==screwdriver,tier=builds", &l));
        assert!(!matches("app!=screwdriver", &l));
        assert!(matches("missing!=x", &l));
        assert!(matches("tier in (builds, other)", &l));
        assert!(!matches("tier notin (builds)", &l));
        assert!(matches("missing notin (builds)", &l));
        assert!(matches("app", &l));
        assert!(matches("!missing", &l));
        assert!(!matches("!app", &l));
        assert!(matches("n>4,n<6", &l));
        assert!(matches("", &l));
        assert!(matches("app.kubernetes.io/managed-by notin (x)", &l));
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in [
            "app=",
            "=x",
            "app in ()",
            "app in (a",
            "app notin x",
            "bad key=x",
            "a=b=c",
            "n>x",
            "app=(x",
        ] {
            if bad == "app=" {
                // an empty value is legal
                assert!(LabelSelector::parse(bad).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn equality_requirements_feed_the_index() {
        let s = LabelSelector::parse("sdbuild=42,app in (a),tier in (a,b),x").unwrap();
        assert_eq!(s.required_pairs(), vec![("sdbuild", "42"), ("app", "a")]);
    }

    fn is_keyword(s: &str) -> bool {
        s == "in" || s == "notin"
    }

    #[test]
    fn keywords_are_not_keys_or_values_as_in_kubernetes() {
        for sel in ["a=in", "a!=notin", "a==in", "in=a", "notin!=b"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    proptest! {
        #[test]
        fn equality_and_inequality_are_complements(k in "[a-z]{1,8}", v in "[a-z0-9]{0,8}", actual in "[a-z0-9]{0,8}") {
            // `in` and `notin` are keywords to Kubernetes' selector lexer, not keys or values
            // (`a=in` and `in=a` are refused there with the same error).
            prop_assume!([&k, &v].iter().all(|s| !is_keyword(s)));
            let l = labels(&[(k.as_str(), actual.as_str())]);
            let eq = LabelSelector::parse(&format!("{k}={v}")).unwrap().matches(&l);
            let ne = LabelSelector::parse(&format!("{k}!={v}")).unwrap().matches(&l);
            prop_assert_ne!(eq, ne);
        }

        #[test]
        fn in_is_the_union_of_equalities(k in "[a-z]{1,8}", vs in prop::collection::vec("[a-z0-9]{1,5}", 1..4), actual in "[a-z0-9]{1,5}") {
            prop_assume!(!is_keyword(&k) && vs.iter().all(|v| !is_keyword(v)));
            let l = labels(&[(k.as_str(), actual.as_str())]);
            let sel = format!("{k} in ({})", vs.join(","));
            let any = vs.iter().any(|v| LabelSelector::parse(&format!("{k}={v}")).unwrap().matches(&l));
            prop_assert_eq!(LabelSelector::parse(&sel).unwrap().matches(&l), any);
        }
    }
}
