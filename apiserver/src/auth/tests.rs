//! The request path of [`Auth`] with kube-apiserver's reviews answered in-process.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Method};

use super::testing::{auth, pki, trust, Fake, Rule};
use super::x509::testpki::TestCa;
use super::*;

fn allow_all() -> Rule {
    Box::new(|_| true)
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    certs: Vec<CertificateDer<'static>>,
) -> (http::request::Parts, RequestInfo) {
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .body(())
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    req.extensions_mut().insert(PeerCerts(Arc::new(certs)));
    let info = RequestInfo::parse(&method, path, false, None);
    (req.into_parts().0, info)
}

const ITEM: &str = "/apis/coredump.io/v1alpha1/namespaces/team-a/coredumps/x";

#[tokio::test]
async fn front_proxy_with_an_allowed_certificate_acts_as_the_named_user() {
    let pki = pki();
    let fake = Fake::new(allow_all());
    let a = auth(fake.clone(), Some(trust(&pki)), AuthConfig::default());
    let proxy = pki.front.client("front-proxy-client", &[]);
    let (parts, info) = request(
        Method::GET,
        ITEM,
        &[
            ("X-Remote-User", "alice"),
            ("X-Remote-Group", "team-a"),
            ("X-Remote-Extra-Scopes", "s"),
        ],
        vec![proxy],
    );
    let u = a.check(&parts, &info).await.expect("allowed");
    assert_eq!(u.name, "alice");
    assert_eq!(u.groups, ["team-a", SYSTEM_AUTHENTICATED]);
    assert_eq!(u.extra["scopes"], ["s"]);
    let last = fake
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .expect("reviewed");
    assert_eq!(last.user, "alice");
    assert!(
        matches!(&last.action, Action::Resource { verb, name, .. } if verb == "get" && name == "x")
    );
}

#[tokio::test]
async fn identity_headers_are_ignored_without_a_trusted_proxy_certificate() {
    let pki = pki();
    let a = auth(
        Fake::new(allow_all()),
        Some(trust(&pki)),
        AuthConfig::default(),
    );
    let spoof = [
        ("X-Remote-User", "admin"),
        ("X-Remote-Group", "system:masters"),
    ];
    // No certificate at all.
    let (parts, info) = request(Method::GET, ITEM, &spoof, vec![]);
    assert_eq!(a.check(&parts, &info).await.map_err(|e| e.code), Err(401));
    // Same CA, CN not in the allowed names.
    let other = pki.front.client("not-the-aggregator", &[]);
    let (parts, info) = request(Method::GET, ITEM, &spoof, vec![other]);
    assert_eq!(a.check(&parts, &info).await.map_err(|e| e.code), Err(401));
    // The allowed CN, but from another CA.
    let forged = TestCa::new("front-proxy-ca").client("front-proxy-client", &[]);
    let (parts, info) = request(Method::GET, ITEM, &spoof, vec![forged]);
    assert_eq!(a.check(&parts, &info).await.map_err(|e| e.code), Err(401));
    // With a token next to spoofed headers, the token's user counts, not the headers.
    let mut h = spoof.to_vec();
    h.push(("Authorization", "Bearer sa-token"));
    let (parts, info) = request(Method::GET, ITEM, &h, vec![]);
    let u = a.check(&parts, &info).await.expect("token user");
    assert_eq!(u.name, "system:serviceaccount:ns:agent");
    assert!(!u.in_group(SYSTEM_MASTERS));
}

#[tokio::test]
async fn client_certificates_from_the_client_ca_name_user_and_groups() {
    let pki = pki();
    let fake = Fake::new(allow_all());
    let a = auth(fake.clone(), Some(trust(&pki)), AuthConfig::default());
    let cert = pki.cluster.client("carol", &["team-c", "ops"]);
    let (parts, info) = request(Method::GET, ITEM, &[("X-Remote-User", "admin")], vec![cert]);
    let u = a.check(&parts, &info).await.expect("allowed");
    assert_eq!(u.name, "carol");
    assert_eq!(u.groups, ["team-c", "ops", SYSTEM_AUTHENTICATED]);
    // A client certificate with system:masters skips the review.
    let admin = pki.cluster.client("kubernetes-admin", &[SYSTEM_MASTERS]);
    let before = fake.access_calls.load(Ordering::SeqCst);
    let (parts, info) = request(Method::DELETE, ITEM, &[], vec![admin]);
    assert!(a.check(&parts, &info).await.is_ok());
    assert_eq!(fake.access_calls.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn token_reviews_are_cached_both_ways_until_the_ttl() {
    let pki = pki();
    let fake = Fake::new(allow_all());
    let cfg = AuthConfig {
        token_cache_ttl: Duration::from_millis(300),
        ..Default::default()
    };
    let a = auth(fake.clone(), Some(trust(&pki)), cfg);
    let good = [("Authorization", "Bearer sa-token")];
    let bad = [("Authorization", "bearer nope")];
    for _ in 0..3 {
        let (parts, info) = request(Method::GET, ITEM, &good, vec![]);
        let u = a.check(&parts, &info).await.expect("authenticated");
        // Pod-bound token extras travel through.
        assert_eq!(
            u.extra["authentication.kubernetes.io/node-name"],
            ["node-1"]
        );
        let (parts, info) = request(Method::GET, ITEM, &bad, vec![]);
        assert_eq!(a.check(&parts, &info).await.map_err(|e| e.code), Err(401));
    }
    assert_eq!(
        fake.token_calls.load(Ordering::SeqCst),
        2,
        "one review per token"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (parts, info) = request(Method::GET, ITEM, &good, vec![]);
    assert!(a.check(&parts, &info).await.is_ok());
    assert_eq!(
        fake.token_calls.load(Ordering::SeqCst),
        3,
        "reviewed again after the TTL"
    );
}

#[tokio::test]
async fn access_reviews_are_cached_and_denials_are_403_before_any_handler() {
    let pki = pki();
    // Alice may do anything in team-a and nothing in team-b.
    let fake = Fake::new(Box::new(|a: &Attributes| {
        matches!(&a.action, Action::Resource { namespace, .. } if namespace == "team-a")
            || matches!(&a.action, Action::NonResource { .. })
    }));
    let cfg = AuthConfig {
        allow_cache_ttl: Duration::from_millis(300),
        deny_cache_ttl: Duration::from_millis(300),
        ..Default::default()
    };
    let a = auth(fake.clone(), Some(trust(&pki)), cfg);
    let proxy = || pki.front.client("front-proxy-client", &[]);
    let alice = [("X-Remote-User", "alice"), ("X-Remote-Group", "team-a")];
    let theirs = "/apis/coredump.io/v1alpha1/namespaces/team-b/coredumps/x/download";
    for _ in 0..2 {
        let (parts, info) = request(Method::GET, ITEM, &alice, vec![proxy()]);
        assert!(a.check(&parts, &info).await.is_ok());
        let (parts, info) = request(Method::GET, theirs, &alice, vec![proxy()]);
        let e = a.check(&parts, &info).await.expect_err("denied");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"coredumps.coredump.io "x" is forbidden: User "alice" cannot get resource "coredumps/download" in API group "coredump.io" in the namespace "team-b""#
        );
    }
    assert_eq!(fake.access_calls.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (parts, info) = request(Method::GET, theirs, &alice, vec![proxy()]);
    assert!(a.check(&parts, &info).await.is_err());
    assert_eq!(fake.access_calls.load(Ordering::SeqCst), 3);
    // Discovery is a non-resource review.
    let (parts, info) = request(
        Method::GET,
        "/apis/coredump.io/v1alpha1",
        &alice,
        vec![proxy()],
    );
    assert!(a.check(&parts, &info).await.is_ok());
    let last = fake
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .expect("reviewed");
    assert_eq!(
        last.action,
        Action::NonResource {
            verb: "get".into(),
            path: "/apis/coredump.io/v1alpha1".into()
        }
    );
}

#[tokio::test]
async fn before_the_configmap_is_read_requests_get_503_but_health_stays_open() {
    let a = auth(Fake::new(allow_all()), None, AuthConfig::default());
    assert!(!a.is_ready());
    let (parts, info) = request(
        Method::GET,
        ITEM,
        &[("Authorization", "Bearer sa-token")],
        vec![],
    );
    assert_eq!(a.check(&parts, &info).await.map_err(|e| e.code), Err(503));
    for path in ["/healthz", "/livez", "/readyz", "/readyz/ping"] {
        let (parts, info) = request(Method::GET, path, &[], vec![]);
        assert!(a.check(&parts, &info).await.is_ok(), "{path}");
    }
    assert!(!is_health_path("/healthzz"));
}

#[tokio::test]
async fn check_request_strips_identity_headers_and_records_the_user() {
    let pki = pki();
    let a = auth(
        Fake::new(allow_all()),
        Some(trust(&pki)),
        AuthConfig::default(),
    );
    let mut req = http::Request::builder()
        .uri(ITEM)
        .header("X-Remote-User", "alice")
        .header("X-Remote-Extra-Foo", "bar")
        .header("Authorization", "Bearer x")
        .header("Accept", "application/json")
        .body(())
        .expect("request");
    req.extensions_mut().insert(PeerCerts(Arc::new(vec![pki
        .front
        .client("front-proxy-client", &[])])));
    let info = RequestInfo::parse(&Method::GET, ITEM, false, None);
    let u = a.check_request(&mut req, &info).await.expect("allowed");
    assert_eq!(req.extensions().get::<UserInfo>(), Some(&u));
    let left: Vec<_> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_eq!(left, ["accept"]);
}

#[test]
fn bearer_token_parsing() {
    let h = |v: &str| {
        let mut m = HeaderMap::new();
        m.insert(AUTHORIZATION, HeaderValue::from_str(v).expect("value"));
        m
    };
    assert_eq!(bearer_token(&h("Bearer abc")), Some("abc".into()));
    assert_eq!(bearer_token(&h("  BEARER abc  ")), Some("abc".into()));
    assert_eq!(bearer_token(&h("Basic abc")), None);
    assert_eq!(bearer_token(&h("Bearer")), None);
    assert_eq!(bearer_token(&h("Bearer  abc")), None);
    assert_eq!(bearer_token(&HeaderMap::new()), None);
}
