//! Label and field selectors with kube-apiserver's syntax and error wording.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `labelSelector`. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: {why} (in label selector {s:?})"
            ))
        };
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(rest) = term.strip_prefix('!') {
                let key = rest.trim();
                check_label_key(key).map_err(|e| bad(&e))?;
                Requirement {
                    key: key.to_string(),
                    op: Op::NotExists,
                }
            } else if let Some((key, values)) = split_set(term, " notin ") {
                Requirement {
                    key: key.to_string(),
                    op: Op::NotIn(values.map_err(|e| bad(&e))?),
                }
            } else if let Some((key, values)) = split_set(term, " in ") {
                Requirement {
                    key: key.to_string(),
                    op: Op::In(values.map_err(|e| bad(&e))?),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotEq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = term.split_once('>') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Gt(v.trim().parse().map_err(|_| {
                        bad("for 'gt', 'lt' operators, the value must be an integer")
                    })?),
                }
            } else if let Some((k, v)) = term.split_once('<') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Lt(v.trim().parse().map_err(|_| {
                        bad("for 'gt', 'lt' operators, the value must be an integer")
                    })?),
                }
            } else {
                Requirement {
                    key: term.to_string(),
                    op: Op::Exists,
                }
            };
            check_label_key(&req.key).map_err(|e| bad(&e))?;
            match &req.op {
                Op::Eq(v) | Op::NotEq(v) => check_label_value(v).map_err(|e| bad(&e))?,
                Op::In(vs) | Op::NotIn(vs) => {
                    for v in vs {
                        check_label_value(v).map_err(|e| bad(&e))?;
                    }
                }
                _ => {}
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Eq(want) => v == Some(want),
                Op::NotEq(want) => v != Some(want),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    /// Byte strings every matching object's stored JSON must contain: `"key":"value"` of
    /// each equality requirement, as serde_json writes it. A store can skip decoding an
    /// object without them; the selector still decides on the decoded object.
    pub fn required_fragments(&self) -> Vec<Vec<u8>> {
        self.0
            .iter()
            .filter_map(|r| match &r.op {
                Op::Eq(v) => {
                    let k = serde_json::to_string(&r.key).ok()?;
                    let v = serde_json::to_string(v).ok()?;
                    Some(format!("{k}:{v}").into_bytes())
                }
                _ => None,
            })
            .collect()
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.is_empty() || self.matches(&labels_of(obj))
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `key in (a,b)` / `key notin (a,b)`.
fn split_set<'a>(term: &'a str, op: &str) -> Option<(&'a str, Result<Vec<String>, String>)> {
    let (key, rest) = term.split_once(op)?;
    let rest = rest.trim();
    let values = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner
                .split(',')
                .map(|v| v.trim().to_string())
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| format!("expected a parenthesized set of values, found {rest:?}"));
    Some((key.trim(), values))
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns_label) {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_qualified_name_part(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && is_qualified_name_part(v)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-joined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks every field against `supported` (as kube-apiserver does, an
    /// unsupported field is a 400 "field label not supported").
    pub fn parse(s: &str, supported: &[&str], kind: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in s.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "\"{field}\" is not a known field selector: only {}",
                    supported
                        .iter()
                        .map(|f| format!("\"{f}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_reason_message_prefix(&format!(
                    "field label not supported: {field} for {kind}: "
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name a `metadata.name=X` selector pins, for authorization and `kubectl wait`.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Matches using `field_value(field)` to read the object's fields.
    pub fn matches(&self, field_value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let have = field_value(field).unwrap_or_default();
            (have == *want) == *eq
        })
    }
}

impl ApiError {
    fn with_reason_message_prefix(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}{}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn required_fragments_are_what_serde_json_writes_for_equalities() {
        let sel = LabelSelector::parse("app=web,example.com/tier==front,x!=y,z in (a),!w")
            .expect("parse");
        let frags: Vec<String> = sel
            .required_fragments()
            .into_iter()
            .map(|f| String::from_utf8(f).expect("utf8"))
            .collect();
        assert_eq!(frags, [r#""app":"web""#, r#""example.com/tier":"front""#]);
        let obj = serde_json::json!({"metadata": {"labels": {"example.com/tier": "front", "app": "web"}}});
        let bytes = serde_json::to_vec(&obj).expect("json");
        for f in sel.required_fragments() {
            assert!(memchr::memmem::find(&bytes, &f).is_some());
        }
        assert!(LabelSelector::parse("!a")
            .expect("parse")
            .required_fragments()
            .is_empty());
    }

    #[test]
    fn label_selectors_follow_kubernetes_syntax() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "app notin (db)",
            "app",
            "!missing",
            "app=web,tier=front",
            "n>3",
            "n<6",
            "missing notin (x)",
            "example.com/other!=x",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).expect(s).matches(&l),
                "{s} should match"
            );
        }
        let no = [
            "app=db",
            "app in (db)",
            "app notin (web)",
            "!app",
            "missing",
            "n>5",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s).expect(s).matches(&l),
                "{s} should not match"
            );
        }
        for bad in ["app in web", "-bad=x", "app=-x-", "n>x", "app in (a b)"] {
            let e = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(e.code, 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_reject_unknown_fields() {
        let sel = FieldSelector::parse(
            "metadata.name=a,status.phase!=Stored",
            &["metadata.name", "status.phase"],
            "Coredump",
        )
        .expect("parse");
        assert_eq!(sel.pinned_name(), Some("a"));
        assert!(
            sel.matches(|f| Some(if f == "metadata.name" { "a" } else { "Pending" }.to_string()))
        );
        assert!(
            !sel.matches(|f| Some(if f == "metadata.name" { "a" } else { "Stored" }.to_string()))
        );
        let e = FieldSelector::parse("spec.foo=x", &["metadata.name"], "Coredump")
            .expect_err("unknown");
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("field label not supported: spec.foo"),
            "{}",
            e.message
        );
    }
}
