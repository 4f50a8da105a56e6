//! The HTTP surface in-process: the server's [`router`] over the test registry
//! (`crate::testing`), with bearer tokens reviewed by a fake reviewer and the namespace
//! informer seeded, driven request by request with `tower::ServiceExt::oneshot`. A
//! regression in the mapping of errors to `Status`, selectors, paging, preconditions,
//! negotiation or watch shows here in seconds; `integration/tests/api.rs` checks the same
//! behaviour through the aggregator and kubectl.
//!
//! Who is who: `alice` may do anything in namespace `team-a` (and on non-resource paths)
//! and nothing elsewhere, and so may the node agent of `node-1` (whom node restriction
//! then limits); `bob` may do nothing; `admin` is in `system:masters`, so skips
//! authorization. Namespace `team-a` is known to the informer; any other is looked up in
//! a cluster that never answers, so a create there meets the server's real live lookup.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState};
use crate::auth::testing::{self as fake_auth, Fake, Rule};
use crate::auth::{Action, UserInfo, SYSTEM_MASTERS};
use crate::namespaces::Namespaces;
use crate::noderestriction::NodeRestriction;
use crate::testing::{coredump, fixture_with, unreachable_cluster, Fixture, REVISION_LOG};
use crate::uploads::Uploads;

const API: &str = "/apis/coredump.io/v1alpha1";
const COREDUMPS: &str = "/apis/coredump.io/v1alpha1/namespaces/team-a/coredumps";
const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";
const ADMIN: &str = "admin-token";
/// `auth::testing::Fake`'s node agent on node-1.
const AGENT: &str = "sa-token";
const ALICE_NAME: &str = "alice";
const AGENT_NAME: &str = "system:serviceaccount:ns:agent";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

struct App {
    router: Router,
    fake: Arc<Fake>,
    _fixture: Fixture,
}

/// One answer, its body read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        uid: format!("{name}-uid"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    }
}

fn app() -> App {
    app_with_log(REVISION_LOG)
}

/// [`app`] whose store keeps only `revision_log` revisions.
fn app_with_log(revision_log: usize) -> App {
    let cluster = unreachable_cluster();
    // The chain `run` builds, less the Events sink (it needs a cluster that answers).
    let f = fixture_with(
        vec![Arc::new(NodeRestriction::new(cluster.clone()))],
        revision_log,
    );
    let rule: Rule = Box::new(|a| {
        [ALICE_NAME, AGENT_NAME].contains(&a.user.as_str())
            && match &a.action {
                Action::Resource { namespace, .. } => namespace == "team-a",
                Action::NonResource { .. } => true,
            }
    });
    let fake = Fake::with_tokens(
        rule,
        [
            (ALICE, user(ALICE_NAME, &["team-a"])),
            (BOB, user("bob", &[])),
            (ADMIN, user("admin", &[SYSTEM_MASTERS])),
        ],
    );
    let state = AppState {
        registry: Arc::clone(&f.registry),
        metrics: Arc::clone(&f.metrics),
        blobs: Arc::clone(&f.blobs),
        auth: fake_auth::ready(Arc::clone(&fake)),
        uploads: Arc::new(Uploads::default()),
        namespaces: Namespaces::seeded(cluster, &["team-a"]),
    };
    App {
        router: router(state),
        fake,
        _fixture: f,
    }
}

/// A request with `token` as its bearer token (none when empty).
fn req(method: Method, path: &str, token: &str) -> http::request::Builder {
    let b = Request::builder().method(method).uri(path);
    if token.is_empty() {
        b
    } else {
        b.header(AUTHORIZATION, format!("Bearer {token}"))
    }
}

/// `key=value` pairs as a query string.
fn query(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Asserts a failure `Status` as kube-apiserver writes one.
#[track_caller]
fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(r.status.as_u16(), code, "{}", r.text);
    assert_eq!(
        r.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{}",
        r.text
    );
    let s = &r.json;
    assert_eq!(
        (&s["kind"], &s["apiVersion"], &s["status"]),
        (&json!("Status"), &json!("v1"), &json!("Failure")),
        "{}",
        r.text
    );
    assert_eq!(s["code"], code, "{}", r.text);
    assert_eq!(s["reason"], reason, "{}", r.text);
    assert!(
        s["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
}

impl App {
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("router");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    /// A request without a body.
    async fn call(&self, method: Method, path: &str, token: &str) -> Reply {
        self.send(
            req(method, path, token)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, ALICE).await
    }

    /// A request with a body of `content_type`.
    async fn with_body(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Reply {
        let r = req(method, path, token)
            .header(CONTENT_TYPE, content_type)
            .body(body.into())
            .expect("request");
        self.send(r).await
    }

    async fn post(&self, path: &str, token: &str, obj: &Value) -> Reply {
        self.with_body(
            Method::POST,
            path,
            token,
            "application/json",
            obj.to_string(),
        )
        .await
    }

    /// Alice creates `obj` in team-a; it must succeed.
    async fn create(&self, obj: &Value) -> Value {
        let r = self.post(COREDUMPS, ALICE, obj).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json
    }

    async fn list(&self, params: &[(&str, &str)]) -> Reply {
        self.get(&format!("{COREDUMPS}?{}", query(params))).await
    }
}

fn labelled(name: &str, labels: Value, node: &str) -> Value {
    let mut o = coredump(name, labels, None);
    o["spec"]["nodeName"] = json!(node);
    o
}

#[tokio::test]
async fn unknown_paths_and_missing_objects_are_404_statuses() {
    let app = &app();
    for path in [
        "/nope",
        "/apis/coredump.io/v1alpha1/namespaces/team-a/widgets",
        "/apis/coredump.io/v1alpha1/namespaces/team-a/coredumps/x/status/extra",
    ] {
        let r = app.get(path).await;
        assert_status(&r, 404, "NotFound");
        assert_eq!(
            r.json["message"], "the server could not find the requested resource",
            "{path}"
        );
    }
    let r = app.get(&format!("{COREDUMPS}/missing")).await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(
        r.json["message"],
        r#"coredumps.coredump.io "missing" not found"#
    );
    assert_eq!(
        r.json["details"],
        json!({"name": "missing", "group": "coredump.io", "kind": "coredumps"})
    );
    // A CrashGroup is written only by the server: its create is 405, not a 404.
    let r = app
        .post(
            &format!("{API}/namespaces/team-a/crashgroups"),
            ALICE,
            &json!({}),
        )
        .await;
    assert_status(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn bad_bodies_are_400_invalid_objects_422_with_causes_and_nothing_is_stored() {
    let app = &app();
    let post_raw = |body: &'static str| {
        app.with_body(Method::POST, COREDUMPS, ALICE, "application/json", body)
    };
    let r = post_raw("{not json").await;
    assert_status(&r, 400, "BadRequest");
    assert!(
        r.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be decoded as JSON")),
        "{}",
        r.text
    );

    let mut wrong = coredump("w", json!({}), None);
    wrong["apiVersion"] = json!("coredump.io/v9");
    assert_status(&app.post(COREDUMPS, ALICE, &wrong).await, 400, "BadRequest");
    let mut elsewhere = coredump("w", json!({}), None);
    elsewhere["metadata"]["namespace"] = json!("team-b");
    assert_status(
        &app.post(COREDUMPS, ALICE, &elsewhere).await,
        400,
        "BadRequest",
    );

    let r = app
        .post(COREDUMPS, ALICE, &coredump("Bad_Name", json!({}), None))
        .await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.json["details"]["name"], "Bad_Name");
    assert_eq!(r.json["details"]["kind"], "Coredump");
    assert_eq!(r.json["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(
        r.json["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );

    let mut bad_sha = coredump("badsha", json!({}), None);
    bad_sha["spec"]["sha256"] = json!("xyz");
    let r = app.post(COREDUMPS, ALICE, &bad_sha).await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.json["details"]["causes"][0]["field"], "spec.sha256");

    let mut unknown = coredump("unknown", json!({}), None);
    unknown["spec"]["bogus"] = json!(1);
    let r = app
        .post(
            &format!("{COREDUMPS}?fieldValidation=Strict"),
            ALICE,
            &unknown,
        )
        .await;
    assert_status(&r, 400, "BadRequest");
    assert!(
        r.text.contains(r#"unknown field \"spec.bogus\""#),
        "{}",
        r.text
    );
    let r = app
        .post(
            &format!("{COREDUMPS}?fieldValidation=Warn"),
            ALICE,
            &unknown,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let warning = r.headers.get("warning").and_then(|v| v.to_str().ok());
    assert!(
        warning.is_some_and(|w| w.starts_with("299 - ") && w.contains("spec.bogus")),
        "{warning:?}"
    );

    let r = app
        .with_body(Method::POST, COREDUMPS, ALICE, "application/yaml", "a: b")
        .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    let big = "x".repeat(super::resources::MAX_BODY + 1);
    let r = app
        .with_body(Method::POST, COREDUMPS, ALICE, "application/json", big)
        .await;
    assert_status(&r, 413, "RequestEntityTooLarge");

    // Only the object created under fieldValidation=Warn was stored.
    assert_eq!(names(&app.list(&[]).await.json), ["unknown"]);
}

#[tokio::test]
async fn no_credentials_are_401_and_no_access_403_before_any_handler() {
    let app = &app();
    for token in ["", "not-a-token"] {
        let r = app.call(Method::GET, COREDUMPS, token).await;
        assert_status(&r, 401, "Unauthorized");
    }
    // Health needs no credentials; ready once auth, namespaces and the store are.
    for path in ["/healthz", "/livez", "/readyz"] {
        let r = app.call(Method::GET, path, "").await;
        assert_eq!(
            (r.status, r.text.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
    }

    let r = app.call(Method::GET, COREDUMPS, BOB).await;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json["message"],
        r#"coredumps.coredump.io is forbidden: User "bob" cannot list resource "coredumps" in API group "coredump.io" in the namespace "team-a""#
    );
    assert_eq!(
        r.json["details"],
        json!({"group": "coredump.io", "kind": "coredumps"})
    );
    let last = app
        .fake
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .expect("reviewed");
    assert_eq!(last.user, "bob");
    assert!(
        matches!(&last.action, Action::Resource { verb, namespace, .. } if verb == "list" && namespace == "team-a"),
        "{last:?}"
    );

    // Alice outside team-a: 403 whether or not the object exists (no 404 that would
    // reveal names), and a create refused reaches no handler.
    let r = app
        .get(&format!("{API}/namespaces/team-b/coredumps/secret"))
        .await;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(r.json["details"]["name"], "secret");
    let r = app
        .post(
            &format!("{API}/namespaces/team-b/coredumps"),
            ALICE,
            &coredump("x", json!({}), None),
        )
        .await;
    assert_status(&r, 403, "Forbidden");
    let r = app
        .post(COREDUMPS, BOB, &coredump("x", json!({}), None))
        .await;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(names(&app.list(&[]).await.json), Vec::<String>::new());
    // Cluster-wide lists are reviewed without a namespace: not alice's.
    assert_status(
        &app.get(&format!("{API}/coredumps")).await,
        403,
        "Forbidden",
    );
}

#[tokio::test]
async fn creates_need_a_namespace_the_informer_or_the_cluster_confirms() {
    let app = &app();
    let reviews = app.fake.access_calls.load(Ordering::SeqCst);
    // Not listed by the informer: the live lookup fails (the cluster is unreachable), so
    // the server cannot tell whether the namespace exists and refuses with 503.
    let fresh = format!("{API}/namespaces/team-new/coredumps");
    let r = app
        .post(&fresh, ADMIN, &coredump("x", json!({}), None))
        .await;
    assert_status(&r, 503, "ServiceUnavailable");
    assert!(
        r.json["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot verify namespace team-new")),
        "{}",
        r.text
    );
    let r = app.call(Method::GET, &format!("{fresh}/x"), ADMIN).await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(
        app.fake.access_calls.load(Ordering::SeqCst),
        reviews,
        "system:masters skips the SubjectAccessReview"
    );
    // Listed: created.
    let r = app
        .post(COREDUMPS, ALICE, &coredump("x", json!({}), None))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["metadata"]["namespace"], "team-a");
}

#[tokio::test]
async fn node_agents_create_and_touch_only_their_nodes_coredumps() {
    let app = &app();
    // The pod-bound token's node (node-1) is not the coredump's: refused before any lookup.
    let r = app
        .post(COREDUMPS, AGENT, &labelled("x", json!({}), "n1"))
        .await;
    assert_status(&r, 403, "Forbidden");
    assert!(
        r.text
            .contains(r#"may only create coredumps of its own node, not of node \"n1\""#),
        "{}",
        r.text
    );
    // Its own node: the pod it names is looked up in the cluster, which does not answer.
    let r = app
        .post(COREDUMPS, AGENT, &labelled("x", json!({}), "node-1"))
        .await;
    assert_status(&r, 503, "ServiceUnavailable");
    assert!(
        r.text.contains("cannot verify pod team-a/web"),
        "{}",
        r.text
    );
    // Another node's coredump: neither readable nor deletable by this agent.
    app.create(&labelled("theirs", json!({}), "n1")).await;
    let item = format!("{COREDUMPS}/theirs");
    let r = app.call(Method::GET, &item, AGENT).await;
    assert_status(&r, 403, "Forbidden");
    assert!(
        r.text.contains("may not read coredumps of node"),
        "{}",
        r.text
    );
    let r = app.call(Method::DELETE, &item, AGENT).await;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(app.get(&item).await.status, StatusCode::OK, "not deleted");
}

#[tokio::test]
async fn create_then_get_and_list_round_trip() {
    let app = &app();
    let created = app
        .create(&coredump("one", json!({"app": "web"}), None))
        .await;
    assert_eq!(created["apiVersion"], "coredump.io/v1alpha1");
    assert_eq!(created["kind"], "Coredump");
    let meta = &created["metadata"];
    assert_eq!(meta["generation"], 1);
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{meta}"
    );
    let ts = meta["creationTimestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && !ts.contains('.'), "{ts}");
    let rv: u64 = meta["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("decimal rv");
    assert_eq!(created["status"]["phase"], "Pending");
    let r = app
        .post(COREDUMPS, ALICE, &coredump("one", json!({}), None))
        .await;
    assert_status(&r, 409, "AlreadyExists");

    let got = app.get(&format!("{COREDUMPS}/one")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json, created);

    let list = app.list(&[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.json["kind"], "CoredumpList");
    assert_eq!(list.json["apiVersion"], "coredump.io/v1alpha1");
    let list_rv: u64 = list.json["metadata"]["resourceVersion"]
        .as_str()
        .expect("list rv")
        .parse()
        .expect("decimal");
    assert!(list_rv >= rv, "{list_rv} < {rv}");
    assert_eq!(list.json["items"], json!([created]));
    assert!(list.json["metadata"].get("continue").is_none());

    // Cluster-wide for an admin: the same object.
    let all = app
        .call(Method::GET, &format!("{API}/coredumps"), ADMIN)
        .await;
    assert_eq!(names(&all.json), ["one"]);
    assert_eq!(all.json["items"][0]["metadata"]["namespace"], "team-a");
}

#[tokio::test]
async fn label_and_field_selectors_and_bad_selectors() {
    let app = &app();
    app.create(&labelled(
        "a",
        json!({"app": "web", "tier": "fe"}),
        "node-a",
    ))
    .await;
    app.create(&labelled("b", json!({"app": "web"}), "node-b"))
        .await;
    app.create(&labelled("c", json!({"app": "db"}), "node-a"))
        .await;
    let select = |params: &'static [(&'static str, &'static str)]| async move {
        let r = app.list(params).await;
        assert_eq!(r.status, StatusCode::OK, "{params:?}: {}", r.text);
        names(&r.json)
    };
    assert_eq!(select(&[("labelSelector", "app=web")]).await, ["a", "b"]);
    assert_eq!(select(&[("labelSelector", "app==db")]).await, ["c"]);
    assert_eq!(select(&[("labelSelector", "app!=web")]).await, ["c"]);
    assert_eq!(
        select(&[("labelSelector", "app in (db,cache)")]).await,
        ["c"]
    );
    assert_eq!(
        select(&[("labelSelector", "app notin (db)")]).await,
        ["a", "b"]
    );
    assert_eq!(select(&[("labelSelector", "tier")]).await, ["a"]);
    assert_eq!(select(&[("labelSelector", "!tier")]).await, ["b", "c"]);
    assert_eq!(select(&[("labelSelector", "app=web,!tier")]).await, ["b"]);
    assert_eq!(select(&[("fieldSelector", "metadata.name=b")]).await, ["b"]);
    assert_eq!(
        select(&[("fieldSelector", "metadata.name!=b")]).await,
        ["a", "c"]
    );
    assert_eq!(
        select(&[("fieldSelector", "spec.nodeName=node-a")]).await,
        ["a", "c"]
    );
    assert_eq!(
        select(&[("fieldSelector", "metadata.name=a,spec.nodeName=node-b")]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        select(&[
            ("fieldSelector", "status.phase=Pending"),
            ("labelSelector", "app=db")
        ])
        .await,
        ["c"]
    );

    for (params, needle) in [
        (&[("labelSelector", "app in web")][..], "unable to parse"),
        (&[("labelSelector", "app=web,")][..], "unable to parse"),
        (
            &[("fieldSelector", "spec.image=x")][..],
            "field label not supported",
        ),
        (
            &[("fieldSelector", "metadata.name")][..],
            "invalid selector",
        ),
    ] {
        let r = app.list(params).await;
        assert_status(&r, 400, "BadRequest");
        assert!(r.text.contains(needle), "{params:?}: {}", r.text);
    }
    // A parameter given twice with different values is ambiguous: refused.
    let r = app
        .get(&format!(
            "{COREDUMPS}?labelSelector=app%3Dweb&labelSelector=app%3Ddb"
        ))
        .await;
    assert_status(&r, 400, "BadRequest");
}

#[tokio::test]
async fn limit_and_continue_walk_every_item_once_at_one_revision() {
    let app = &app();
    for i in 0..5 {
        app.create(&coredump(&format!("p{i}"), json!({}), None))
            .await;
    }
    let first = app.list(&[("limit", "2")]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(names(&first.json), ["p0", "p1"]);
    assert_eq!(first.json["metadata"]["remainingItemCount"], 3);
    let list_rv = first.json["metadata"]["resourceVersion"].clone();
    // Changes after the first page do not show in later ones: one snapshot.
    let r = app
        .call(Method::DELETE, &format!("{COREDUMPS}/p4"), ALICE)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create(&coredump("p5", json!({}), None)).await;

    let mut seen = names(&first.json);
    let mut token = first.json["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let mut pages = 1;
    loop {
        let page = app.list(&[("limit", "2"), ("continue", &token)]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_eq!(page.json["metadata"]["resourceVersion"], list_rv);
        for item in page.json["items"].as_array().expect("items") {
            assert_eq!(item["kind"], "Coredump");
        }
        seen.extend(names(&page.json));
        pages += 1;
        assert!(pages <= 3, "too many pages: {seen:?}");
        match page.json["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);

    for params in [
        &[("limit", "1"), ("continue", "garbage")][..],
        &[("limit", "x")][..],
    ] {
        let r = app.list(params).await;
        assert_status(&r, 400, "BadRequest");
    }
    let r = app.list(&[("limit", "1"), ("continue", "garbage")]).await;
    assert!(r.text.contains("continue key is not valid"), "{}", r.text);
    // A revision not reached yet: kube-apiserver's 504 after its wait.
    let r = app.list(&[("resourceVersion", "999999")]).await;
    assert_status(&r, 504, "Timeout");
}

#[tokio::test]
async fn stale_writes_and_failed_delete_preconditions_conflict_and_patches_apply() {
    let app = &app();
    let created = app
        .create(&coredump("u", json!({"app": "web"}), None))
        .await;
    let item = format!("{COREDUMPS}/u");
    let put = |obj: Value| {
        let item = item.clone();
        async move {
            app.with_body(
                Method::PUT,
                &item,
                ALICE,
                "application/json",
                obj.to_string(),
            )
            .await
        }
    };
    let mut edited = created.clone();
    edited["metadata"]["labels"]["app"] = json!("web2");
    let r = put(edited).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["metadata"]["labels"]["app"], "web2");
    assert_ne!(
        r.json["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    // The same (now stale) object again.
    let mut stale = created.clone();
    stale["metadata"]["labels"]["app"] = json!("web3");
    let r = put(stale).await;
    assert_status(&r, 409, "Conflict");
    assert!(
        r.text.contains("the object has been modified"),
        "{}",
        r.text
    );
    assert_eq!(
        r.json["details"],
        json!({"name": "u", "group": "coredump.io", "kind": "coredumps"})
    );

    let patch =
        |ct: &'static str, body: String| app.with_body(Method::PATCH, &item, ALICE, ct, body);
    let merge = "application/merge-patch+json";
    let r = patch(
        merge,
        r#"{"metadata":{"labels":{"app":"web4"}}}"#.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["metadata"]["labels"]["app"], "web4");
    assert_eq!(
        app.get(&item).await.json["metadata"]["labels"]["app"],
        "web4"
    );
    // A resourceVersion in a patch is a precondition.
    let r = patch(
        merge,
        json!({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"],
                            "labels": {"x": "y"}}})
        .to_string(),
    )
    .await;
    assert_status(&r, 409, "Conflict");
    let r = patch(merge, r#"{"spec":{"podName":"other"}}"#.to_string()).await;
    assert_status(&r, 422, "Invalid");
    assert!(r.text.contains("immutable"), "{}", r.text);
    // Status is ignored on the main resource.
    let r = patch(merge, r#"{"status":{"phase":"Failed"}}"#.to_string()).await;
    assert_eq!(r.json["status"]["phase"], "Pending", "{}", r.text);
    let json_patch = "application/json-patch+json";
    let r = patch(
        json_patch,
        r#"[{"op":"test","path":"/metadata/labels/app","value":"nope"},{"op":"add","path":"/metadata/labels/x","value":"y"}]"#.to_string(),
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = patch(
        json_patch,
        r#"[{"op":"test","path":"/metadata/labels/app","value":"web4"},{"op":"add","path":"/metadata/labels/x","value":"y"}]"#.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["metadata"]["labels"]["x"], "y");
    let r = patch(
        "application/strategic-merge-patch+json",
        r#"{"metadata":{"labels":{"z":"1"}}}"#.to_string(),
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");

    let current = app.get(&item).await.json;
    let delete = |options: Value| {
        let item = item.clone();
        async move {
            app.with_body(
                Method::DELETE,
                &item,
                ALICE,
                "application/json",
                options.to_string(),
            )
            .await
        }
    };
    let r = delete(json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}))
    .await;
    assert_status(&r, 409, "Conflict");
    assert!(r.text.contains("Precondition failed: UID"), "{}", r.text);
    let r = delete(json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}}))
    .await;
    assert_status(&r, 409, "Conflict");
    assert!(
        r.text.contains("Precondition failed: ResourceVersion"),
        "{}",
        r.text
    );
    assert_eq!(app.get(&item).await.status, StatusCode::OK, "still there");
    let r = delete(json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "preconditions": {"uid": current["metadata"]["uid"],
                          "resourceVersion": current["metadata"]["resourceVersion"]}}))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["kind"], "Coredump");
    assert_eq!(r.json["metadata"]["uid"], current["metadata"]["uid"]);
    assert_status(&app.get(&item).await, 404, "NotFound");
}

#[tokio::test]
async fn table_and_metadata_negotiation() {
    let app = &app();
    app.create(&coredump("n1", json!({}), None)).await;
    let accept = |path: String, media: &'static str| async move {
        app.send(
            req(Method::GET, &path, ALICE)
                .header(ACCEPT, media)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    };
    let r = accept(COREDUMPS.to_string(), TABLE).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = &r.json;
    assert_eq!(
        (&t["kind"], &t["apiVersion"]),
        (&json!("Table"), &json!("meta.k8s.io/v1"))
    );
    // The columns kubectl prints by default, in order.
    let shown: Vec<String> = t["columnDefinitions"]
        .as_array()
        .expect("columnDefinitions")
        .iter()
        .filter(|c| c["priority"] == 0)
        .filter_map(|c| c["name"].as_str().map(str::to_ascii_uppercase))
        .collect();
    assert_eq!(
        shown,
        [
            "NAME",
            "POD",
            "CONTAINER",
            "SIGNAL",
            "SIGNATURE",
            "CAUSE",
            "SIZE",
            "STORED",
            "PHASE",
            "AGE"
        ]
    );
    assert_eq!(t["rows"][0]["cells"][0], "n1");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert!(t["metadata"]["resourceVersion"].is_string(), "{}", r.text);

    let one = accept(format!("{COREDUMPS}/n1"), TABLE).await.json;
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    let v1beta1 = accept(
        COREDUMPS.to_string(),
        "application/json;as=Table;g=meta.k8s.io;v=v1beta1",
    )
    .await
    .json;
    assert_eq!(v1beta1["apiVersion"], "meta.k8s.io/v1beta1");

    let meta = accept(
        COREDUMPS.to_string(),
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    )
    .await
    .json;
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert_eq!(meta["items"][0]["kind"], "PartialObjectMetadata");
    assert!(meta["items"][0].get("spec").is_none(), "{meta}");

    let r = accept(COREDUMPS.to_string(), "application/vnd.kubernetes.protobuf").await;
    assert_status(&r, 406, "NotAcceptable");
}

/// Reads watch lines until `n` have come, each within a few seconds.
async fn watch_lines(body: Body, n: usize) -> Vec<Value> {
    let mut body = body;
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a watch event in time")
            .expect("the stream stays open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).expect("a JSON event"));
        }
    }
    lines
}

#[tokio::test]
async fn a_watch_from_the_list_revision_streams_later_changes() {
    let app = &app();
    app.create(&coredump("before", json!({"app": "web"}), None))
        .await;
    let list = app.list(&[]).await;
    let rv = list.json["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let watch = |params: Vec<(&'static str, String)>| async move {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app.router
            .clone()
            .oneshot(
                req(
                    Method::GET,
                    &format!("{COREDUMPS}?{}", query(&pairs)),
                    ALICE,
                )
                .body(Body::empty())
                .expect("request"),
            )
            .await
            .expect("router")
    };
    let all = watch(vec![
        ("watch", "true".into()),
        ("resourceVersion", rv.clone()),
    ])
    .await;
    let dbs = watch(vec![
        ("watch", "1".into()),
        ("resourceVersion", rv.clone()),
        ("labelSelector", "app=db".into()),
    ])
    .await;
    for resp in [&all, &dbs] {
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
    // Created after both watches started.
    app.create(&coredump("during", json!({"app": "web"}), None))
        .await;
    let db = app
        .create(&coredump("db", json!({"app": "db"}), None))
        .await;

    let events = watch_lines(all.into_body(), 2).await;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "during"), ("ADDED", "db")], "{events:?}");
    assert_eq!(events[0]["object"]["kind"], "Coredump");
    let event_rv: u64 = events[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("decimal");
    assert!(event_rv > rv.parse::<u64>().expect("decimal"));
    // The selector applies to the stream: only the db object.
    let events = watch_lines(dbs.into_body(), 1).await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"], db);

    // sendInitialEvents without resourceVersionMatch=NotOlderThan is refused up front.
    let r = app
        .list(&[("watch", "true"), ("sendInitialEvents", "true")])
        .await;
    assert_status(&r, 422, "Invalid");
}

#[tokio::test]
async fn revisions_past_the_log_are_410_for_continue_and_in_the_watch_stream() {
    let app = &app_with_log(2);
    for i in 0..3 {
        app.create(&coredump(&format!("p{i}"), json!({}), None))
            .await;
    }
    let first = app.list(&[("limit", "1")]).await;
    let token = first.json["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let rv = first.json["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    // Enough writes for the log to drop the list's revision.
    for i in 0..4 {
        app.create(&coredump(&format!("q{i}"), json!({}), None))
            .await;
    }
    let r = app.list(&[("limit", "1"), ("continue", &token)]).await;
    assert_status(&r, 410, "Expired");
    assert!(
        r.text.contains("continue parameter is too old"),
        "{}",
        r.text
    );
    // A watch from there: 200, then an ERROR event with the 410 (the client relists).
    let resp = app
        .router
        .clone()
        .oneshot(
            req(
                Method::GET,
                &format!("{COREDUMPS}?watch=true&resourceVersion={rv}"),
                ALICE,
            )
            .body(Body::empty())
            .expect("request"),
        )
        .await
        .expect("router");
    assert_eq!(resp.status(), StatusCode::OK);
    let events = watch_lines(resp.into_body(), 1).await;
    assert_eq!(events[0]["type"], "ERROR", "{events:?}");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}
