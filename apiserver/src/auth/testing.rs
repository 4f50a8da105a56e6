//! kube-apiserver's reviews answered in-process, for the unit tests of [`Auth`] and of the
//! HTTP layer: a [`Fake`] reviewer (tokens from a table, access by a rule) and trust
//! settings built from throw-away CAs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::x509::testpki::TestCa;
use super::*;

/// Whether a SubjectAccessReview allows.
pub(crate) type Rule = Box<dyn Fn(&Attributes) -> bool + Send + Sync>;

/// A [`Reviewer`] that counts its calls and remembers the last access review.
pub(crate) struct Fake {
    tokens: HashMap<String, UserInfo>,
    rule: Rule,
    pub(crate) token_calls: AtomicUsize,
    pub(crate) access_calls: AtomicUsize,
    pub(crate) last: Mutex<Option<Attributes>>,
}

impl Fake {
    /// Knows one token, `sa-token`: a node agent's service account on `node-1`.
    pub(crate) fn new(rule: Rule) -> Arc<Self> {
        Self::with_tokens(rule, [])
    }

    /// Knows `sa-token` and `tokens`.
    pub(crate) fn with_tokens(
        rule: Rule,
        tokens: impl IntoIterator<Item = (&'static str, UserInfo)>,
    ) -> Arc<Self> {
        let pod_user = UserInfo {
            name: "system:serviceaccount:ns:agent".into(),
            uid: "sa-uid".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::from([(
                "authentication.kubernetes.io/node-name".to_string(),
                vec!["node-1".to_string()],
            )]),
        };
        let mut table = HashMap::from([("sa-token".to_string(), pod_user)]);
        table.extend(tokens.into_iter().map(|(t, u)| (t.to_string(), u)));
        Arc::new(Self {
            tokens: table,
            rule,
            token_calls: AtomicUsize::new(0),
            access_calls: AtomicUsize::new(0),
            last: Mutex::new(None),
        })
    }
}

impl Reviewer for Fake {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, AuthError>> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        let user = self.tokens.get(token).cloned();
        async move { Ok(user) }.boxed()
    }

    fn review_access<'a>(
        &'a self,
        attrs: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        self.access_calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(attrs.clone());
        }
        let allowed = (self.rule)(attrs);
        async move {
            Ok(Decision {
                allowed,
                reason: String::new(),
            })
        }
        .boxed()
    }
}

/// The front proxy's CA and the cluster's client CA.
pub(crate) struct Pki {
    pub(crate) front: TestCa,
    pub(crate) cluster: TestCa,
}

pub(crate) fn pki() -> Pki {
    Pki {
        front: TestCa::new("front-proxy-ca"),
        cluster: TestCa::new("kubernetes"),
    }
}

/// The ConfigMap kube-apiserver writes, for `pki`.
pub(crate) fn trust(pki: &Pki) -> Trust {
    let data: BTreeMap<String, String> = [
        ("client-ca-file", pki.cluster.pem.as_str()),
        ("requestheader-client-ca-file", pki.front.pem.as_str()),
        ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
        ("requestheader-username-headers", r#"["X-Remote-User"]"#),
        ("requestheader-uid-headers", r#"["X-Remote-Uid"]"#),
        ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        (
            "requestheader-extra-headers-prefix",
            r#"["X-Remote-Extra-"]"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Trust::from_data(&data).expect("trust")
}

/// An [`Auth`] over `fake` with `trust` already read (`None`: not read yet).
pub(crate) fn auth(fake: Arc<Fake>, trust: Option<Trust>, cfg: AuthConfig) -> Auth {
    let (_tx, rx) = watch::channel(trust.map(Arc::new));
    Auth::with_reviewer(fake, cfg, rx)
}

/// An [`Auth`] that has read the ConfigMap of fresh CAs and reviews through `fake`.
pub(crate) fn ready(fake: Arc<Fake>) -> Arc<Auth> {
    Arc::new(auth(fake, Some(trust(&pki())), AuthConfig::default()))
}
