//! The query string, parsed once per request.
//!
//! Invariant: authorization ([`crate::reqinfo::RequestInfo`]) and the handlers read the
//! same [`Query`] value, so a parameter cannot mean one thing to one and another thing to
//! the other. A parameter given twice with different values is refused (400): Go's
//! `url.Values` keeps both and kube-apiserver's decoders take the first, a map would take
//! the last; rather than pick one, nothing ambiguous is served.

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::registry::FieldSelector;

/// Longest query string accepted; kube-apiserver's clients never come near it.
pub const MAX_QUERY: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Query {
    params: BTreeMap<String, String>,
    /// `fieldSelector`, parsed once: authorization reads the name it pins, the handler
    /// checks its fields against the kind (see [`FieldSelector::check_fields`]).
    fields: Result<FieldSelector, ApiError>,
}

impl Query {
    fn new(params: BTreeMap<String, String>) -> Self {
        let fields = FieldSelector::parse_syntax(
            params
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        );
        Self { params, fields }
    }

    /// The parsed `fieldSelector` (empty when absent), or why it does not parse.
    pub fn field_selector(&self) -> Result<&FieldSelector, ApiError> {
        self.fields.as_ref().map_err(Clone::clone)
    }
}

impl Default for Query {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

// The selector is derived from the parameters: equal parameters, equal queries.
impl PartialEq for Query {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params
    }
}
impl Eq for Query {}

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let raw = raw.unwrap_or_default();
        if raw.len() > MAX_QUERY {
            return Err(ApiError::new(
                414,
                "RequestURITooLong",
                format!("the query string is longer than {MAX_QUERY} bytes"),
            ));
        }
        let mut map = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()).into_owned() {
            match map.get(&k) {
                Some(existing) if *existing != v => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter {k:?} is given more than once with different values"
                    )))
                }
                Some(_) => {}
                None => {
                    map.insert(k, v);
                }
            }
        }
        Ok(Self::new(map))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.params.get(key)
    }

    /// The value, treating an empty one as absent (as kube-apiserver's decoders do).
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// A boolean parameter with Go's `strconv.ParseBool` spellings; absent or empty is
    /// false; anything else is a 400.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.non_empty(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key}: invalid value {other:?}: must be true or false"
            ))),
        }
    }
}

impl FromIterator<(String, String)> for Query {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeated_parameters_must_agree() {
        let q = Query::parse(Some("a=1&b=2&a=1")).expect("same value twice");
        assert_eq!(q.get("a").map(String::as_str), Some("1"));
        let e = Query::parse(Some("fieldSelector=metadata.name%3Da&fieldSelector=x"))
            .expect_err("two values");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("fieldSelector"), "{}", e.message);
    }

    #[test]
    fn flags_are_go_booleans() {
        let q = Query::parse(Some("a=true&b=0&c=yes&d=")).expect("parse");
        assert!(q.flag("a").expect("a"));
        assert!(!q.flag("b").expect("b"));
        assert_eq!(q.flag("c").expect_err("c").code, 400);
        assert!(!q.flag("d").expect("d"));
        assert!(!q.flag("missing").expect("missing"));
    }

    proptest! {
        /// Any query string: no panic, and a parse that succeeds round-trips through
        /// form encoding.
        #[test]
        fn any_query_parses_or_is_refused(raw in ".{0,200}") {
            if let Ok(q) = Query::parse(Some(&raw)) {
                let encoded: String = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(q.params.iter())
                    .finish();
                prop_assert_eq!(Query::parse(Some(&encoded)).expect("re-parse"), q);
            }
        }
    }
}
