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
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                // `a,,b` and `a,`: kube-apiserver's lexer wants an identifier there.
                return Err(bad("found ',', expected: identifier"));
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

    /// This selector on stored JSON, for a store to skip objects before decoding them.
    pub fn stored_matcher(&self) -> StoredMatcher<'_> {
        StoredMatcher {
            finders: self
                .required_fragments()
                .iter()
                .map(|f| memchr::memmem::Finder::new(f).into_owned())
                .collect(),
            needs_labels: self.0.iter().any(|r| !matches!(r.op, Op::Eq(_))),
            selector: self,
        }
    }
}

/// A label selector on an object's stored JSON, without decoding the object: the
/// equalities' fragments are searched first (a byte search), then, only when the selector
/// has requirements without an equality (`in`, `!key`, `!=`…), `metadata.labels` alone is
/// parsed (the rest of the object skipped unallocated). It accepts whatever it cannot
/// read, so the check on the decoded object stays the one that decides: it may keep too
/// much, never too little.
pub struct StoredMatcher<'a> {
    selector: &'a LabelSelector,
    finders: Vec<memchr::memmem::Finder<'static>>,
    needs_labels: bool,
}

#[derive(serde::Deserialize)]
struct LabelsOnly {
    #[serde(default)]
    metadata: LabelsMeta,
}

#[derive(serde::Deserialize, Default)]
struct LabelsMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl StoredMatcher<'_> {
    pub fn matches(&self, stored: &[u8]) -> bool {
        if !self.finders.iter().all(|f| f.find(stored).is_some()) {
            return false;
        }
        if !self.needs_labels {
            return true;
        }
        match serde_json::from_slice::<LabelsOnly>(stored) {
            Ok(o) => self.selector.matches(&o.metadata.labels),
            Err(_) => true,
        }
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

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-joined,
/// with kube-apiserver's escapes (`\\`, `\,`, `\=` in values). Every term must hold (AND),
/// so a selector that pins `metadata.name` never matches another name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not escaped with a backslash (apimachinery's `splitTerms`).
fn split_field_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// apimachinery's `UnescapeValue`: unescaped `,` and `=` are not allowed in a value.
fn unescape_field_value(v: &str) -> Result<String, String> {
    let mut out = String::with_capacity(v.len());
    let mut in_slash = false;
    for c in v.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => return Err(format!("invalid escape sequence: \\{c}")),
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(format!("invalid field selector value: unescaped '{c}'")),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err("invalid escape sequence: \\".into());
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses the syntax only, whatever the fields: what authorization needs to find the
    /// pinned name. [`FieldSelector::parse`] adds the check of the fields.
    pub fn parse_syntax(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in split_field_terms(s) {
            if term.trim().is_empty() {
                continue;
            }
            // The first operator in the term splits it (apimachinery's `splitTerm`).
            let split = term.char_indices().find_map(|(i, _)| {
                let rest = &term[i..];
                [("!=", false), ("==", true), ("=", true)]
                    .iter()
                    .find(|(op, _)| rest.starts_with(op))
                    .map(|(op, eq)| (&term[..i], *eq, &rest[op.len()..]))
            });
            let Some((field, eq, value)) = split else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let value = unescape_field_value(value)
                .map_err(|why| ApiError::bad_request(format!("invalid selector: '{s}': {why}")))?;
            reqs.push((field.trim().to_string(), eq, value));
        }
        Ok(Self(reqs))
    }

    /// Parses and checks every field against `supported` (as kube-apiserver does, an
    /// unsupported field is a 400 "field label not supported").
    pub fn parse(s: &str, supported: &[&str], kind: &str) -> Result<Self, ApiError> {
        let sel = Self::parse_syntax(s)?;
        sel.check_fields(supported, kind)?;
        Ok(sel)
    }

    /// Every field must be one the kind supports (kube-apiserver's 400 "field label not
    /// supported" otherwise).
    pub fn check_fields(&self, supported: &[&str], kind: &str) -> Result<(), ApiError> {
        for (field, _, _) in &self.0 {
            if !supported.contains(&field.as_str()) {
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
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name a `metadata.name=X` selector pins, for authorization and `kubectl wait`.
    /// With several such terms any one is a bound: all must hold.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// This selector and `metadata.name=name`: what a watch of one named object serves.
    /// A selector pinning another name is a 400, as kube-apiserver answers.
    pub fn and_name(mut self, name: &str) -> Result<Self, ApiError> {
        if let Some(pinned) = self.pinned_name() {
            if pinned != name {
                return Err(ApiError::bad_request(format!(
                    "fieldSelector metadata.name doesn't match requested name {name:?}"
                )));
            }
        }
        self.0
            .push(("metadata.name".to_string(), true, name.to_string()));
        Ok(self)
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
    use serde_json::json;

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
    fn stored_matcher_agrees_with_the_decoded_check_and_keeps_what_it_cannot_read() {
        let objects = [
            json!({"metadata": {"name": "a", "labels": {"g": "x", "seen": "yes"}}}),
            json!({"metadata": {"name": "b", "labels": {"g": "y"}}}),
            // The equality's fragment, but in an annotation.
            json!({"metadata": {"name": "c", "annotations": {"g": "x"}}}),
            json!({"metadata": {"name": "d", "labels": {"g": "z", "seen": "no"}}}),
        ];
        for (sel, reads_labels) in [
            ("", false),
            ("g=x", false),
            ("g in (x,y)", true),
            ("!seen", true),
            ("g!=y", true),
            ("seen,g notin (z)", true),
            ("g=x,!seen", true),
        ] {
            let s = LabelSelector::parse(sel).expect(sel);
            let m = s.stored_matcher();
            for o in &objects {
                let bytes = serde_json::to_vec(o).expect("json");
                let (stored, decoded) = (m.matches(&bytes), s.matches_object(o));
                // Never refuses what the selector matches; with the labels read, exact.
                assert!(stored || !decoded, "{sel} refused {o}");
                if reads_labels {
                    assert_eq!(stored, decoded, "{sel} on {o}");
                }
            }
        }
        // The fragment search alone keeps the annotation look-alike; the labels do not.
        let c = serde_json::to_vec(&objects[2]).expect("json");
        assert!(LabelSelector::parse("g=x")
            .expect("parse")
            .stored_matcher()
            .matches(&c));
        assert!(!LabelSelector::parse("g in (x)")
            .expect("parse")
            .stored_matcher()
            .matches(&c));
        // Unreadable labels are kept for the decoded check to decide.
        let s = LabelSelector::parse("!seen").expect("parse");
        assert!(s
            .stored_matcher()
            .matches(br#"{"metadata":{"labels":{"seen":1}}}"#));
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

    #[test]
    fn field_selector_values_follow_apimachinery_escapes() {
        let f = ["metadata.name", "spec.nodeName"];
        for bad in [
            "metadata.name=x=y",
            "metadata.name=a\\q",
            "metadata.name=a\\",
            "metadata.name",
        ] {
            assert_eq!(
                FieldSelector::parse(bad, &f, "Coredump")
                    .expect_err(bad)
                    .code,
                400,
                "{bad}"
            );
        }
        let sel = FieldSelector::parse("spec.nodeName=a\\,b\\=c,metadata.name==x", &f, "Coredump")
            .expect("escaped");
        assert!(sel.matches(|field| Some(
            if field == "spec.nodeName" {
                "a,b=c"
            } else {
                "x"
            }
            .to_string()
        )));
        assert_eq!(sel.pinned_name(), Some("x"));
        assert!(LabelSelector::parse("a,,b").is_err());
        assert!(LabelSelector::parse("a,").is_err());
        assert!(LabelSelector::parse("  ").expect("blank").is_empty());
    }

    #[test]
    fn a_named_watch_serves_only_its_name() {
        let f = ["metadata.name", "status.phase"];
        let other = FieldSelector::parse("metadata.name=b", &f, "Coredump").expect("parse");
        assert_eq!(other.and_name("a").expect_err("mismatch").code, 400);
        let sel = FieldSelector::parse("status.phase=Stored", &f, "Coredump")
            .expect("parse")
            .and_name("a")
            .expect("and");
        assert_eq!(sel.pinned_name(), Some("a"));
        assert!(!sel.matches(|field| Some(
            if field == "metadata.name" {
                "b"
            } else {
                "Stored"
            }
            .to_string()
        )));
    }

    use proptest::prelude::*;

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('=', "\\=")
    }

    proptest! {
        /// Any selector text: no panic, and an error is a 400.
        #[test]
        fn any_selector_parses_or_is_a_400(s in ".{0,80}") {
            if let Err(e) = LabelSelector::parse(&s) {
                prop_assert_eq!(e.code, 400);
            }
            if let Err(e) = FieldSelector::parse_syntax(&s) {
                prop_assert_eq!(e.code, 400);
            }
        }

        /// Equalities over valid keys and values match exactly the labels they name.
        #[test]
        fn label_equalities_round_trip(
            pairs in proptest::collection::btree_map("[a-z][a-z0-9]{0,8}", "[A-Za-z0-9]{0,10}", 1..5)
        ) {
            let text = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            let sel = LabelSelector::parse(&text).expect("valid selector");
            prop_assert!(sel.matches(&pairs));
            let mut other = pairs.clone();
            if let Some((_, v)) = other.iter_mut().next() {
                v.push('x');
            }
            prop_assert!(!sel.matches(&other));
        }

        /// An escaped value comes back unchanged, whatever it holds.
        #[test]
        fn field_values_round_trip_through_escapes(v in "[^ ]{0,40}") {
            let sel = FieldSelector::parse_syntax(&format!("spec.nodeName={}", escape(&v)))
                .expect("escaped value parses");
            prop_assert!(sel.matches(|_| Some(v.clone())));
        }
    }
}
