//! The REST core in-process: the registry over a temporary store with the server's kinds
//! and admission chain, so a regression in create/get/list/paging/preconditions/patch/
//! watch/quota/crash groups shows in a second, not only through a kube-apiserver built
//! from Go (`http::router_tests` covers the HTTP layer over the same fixture, the
//! integration tests the aggregator and kubectl).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::kinds::{CoredumpKind, CrashGroupKind, QuotaKind};
use super::watch::{self, WatchItem};
use super::*;
use crate::testing::{coredump, fixture};

fn ctx() -> Ctx {
    Ctx::default()
}

async fn create(r: &Registry, kind: &dyn Kind, body: Value) -> Result<Value, ApiError> {
    r.create(kind, "ns", body, FieldValidation::Strict, &mut ctx())
        .await
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|o| str_at(o, "/metadata/name"))
        .collect()
}

#[tokio::test]
async fn create_get_list_by_label_and_consistent_pages() {
    let f = fixture();
    let r = &f.registry;
    for i in 0..5 {
        create(
            r,
            &CoredumpKind,
            coredump(
                &format!("c{i}"),
                json!({"tier": if i % 2 == 0 { "a" } else { "b" }}),
                None,
            ),
        )
        .await
        .expect("create");
    }
    let got = r.get(&CoredumpKind, "ns", "c3").await.expect("get");
    assert_eq!(got["status"]["phase"], "Pending");
    assert_eq!(got["kind"], "Coredump");
    let e = r
        .get(&CoredumpKind, "ns", "missing")
        .await
        .expect_err("404");
    assert_eq!((e.code, e.reason), (404, "NotFound"));

    let by_label = ListOptions {
        label: LabelSelector::parse("tier=a").expect("selector"),
        ..Default::default()
    };
    let l = r
        .list(&CoredumpKind, Some("ns"), &by_label)
        .await
        .expect("list");
    assert_eq!(names(&l.items), ["c0", "c2", "c4"]);

    // Pages of 2 at one revision: a create between pages does not show up in them.
    let mut opts = ListOptions {
        limit: Some(2),
        ..Default::default()
    };
    let p1 = r
        .list(&CoredumpKind, Some("ns"), &opts)
        .await
        .expect("page 1");
    assert_eq!(names(&p1.items), ["c0", "c1"]);
    create(r, &CoredumpKind, coredump("c10", json!({}), None))
        .await
        .expect("create between pages");
    opts.continue_token = p1.continue_token.clone();
    let p2 = r
        .list(&CoredumpKind, Some("ns"), &opts)
        .await
        .expect("page 2");
    assert_eq!(names(&p2.items), ["c2", "c3"]);
    assert_eq!(p2.resource_version, p1.resource_version);
    opts.continue_token = p2.continue_token.clone();
    let p3 = r
        .list(&CoredumpKind, Some("ns"), &opts)
        .await
        .expect("page 3");
    assert_eq!(names(&p3.items), ["c4"]);
    assert!(p3.continue_token.is_none());
}

#[tokio::test]
async fn conflicts_preconditions_immutability_and_dry_run() {
    let f = fixture();
    let r = &f.registry;
    let created = create(r, &CoredumpKind, coredump("a", json!({}), None))
        .await
        .expect("create");
    let e = create(r, &CoredumpKind, coredump("a", json!({}), None))
        .await
        .expect_err("exists");
    assert_eq!((e.code, e.reason), (409, "AlreadyExists"));

    // An update from a stale read conflicts.
    let mut stale = created.clone();
    stale["metadata"]["labels"] = json!({"x": "1"});
    let w = WriteOpts {
        status_only: false,
        validation: FieldValidation::Strict,
    };
    r.update(&CoredumpKind, "ns", "a", stale.clone(), w, &mut ctx())
        .await
        .expect("first update");
    let e = r
        .update(&CoredumpKind, "ns", "a", stale, w, &mut ctx())
        .await
        .expect_err("stale");
    assert_eq!(e.code, 409, "{}", e.message);

    // The spec never changes.
    let patch = (PatchType::Merge, json!({"spec": {"podName": "other"}}));
    let e = r
        .patch(&CoredumpKind, "ns", "a", patch, w, &mut ctx())
        .await
        .expect_err("immutable");
    assert_eq!(e.code, 422, "{}", e.message);

    // A delete whose uid precondition names another object is refused.
    let pre = Preconditions {
        uid: Some("someone-else".into()),
        resource_version: None,
    };
    let e = r
        .delete(&CoredumpKind, "ns", "a", &pre, &ctx())
        .await
        .expect_err("precondition");
    assert_eq!(e.code, 409);

    // Dry run: answered as if created, nothing stored, no group counted.
    let mut dry = Ctx {
        dry_run: true,
        ..Default::default()
    };
    let fp = format!("v1:{}", "c".repeat(64));
    let out = r
        .create(
            &CoredumpKind,
            "ns",
            coredump("d", json!({}), Some(&fp)),
            FieldValidation::Strict,
            &mut dry,
        )
        .await
        .expect("dry run");
    assert_eq!(out["metadata"]["name"], "d");
    assert_eq!(
        r.get(&CoredumpKind, "ns", "d")
            .await
            .expect_err("not stored")
            .code,
        404
    );
    let groups = r
        .list(&CrashGroupKind, Some("ns"), &ListOptions::default())
        .await
        .expect("groups");
    assert!(groups.items.is_empty());
}

#[tokio::test]
async fn quota_and_crash_groups_run_in_the_create_transaction() {
    let f = fixture();
    let r = &f.registry;
    create(
        r,
        &QuotaKind,
        json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
               "metadata": {"name": "q"}, "spec": {"hard": {"count": "1"}}}),
    )
    .await
    .expect("quota");
    let fp = format!("v1:{}", "d".repeat(64));
    let first = create(r, &CoredumpKind, coredump("x1", json!({}), Some(&fp)))
        .await
        .expect("x1");
    assert_eq!(first["status"]["phase"], "Pending");
    let second = create(r, &CoredumpKind, coredump("x2", json!({}), Some(&fp)))
        .await
        .expect("x2");
    assert_eq!(second["status"]["phase"], "Rejected");
    let groups = r
        .list(&CrashGroupKind, Some("ns"), &ListOptions::default())
        .await
        .expect("groups");
    assert_eq!(groups.items.len(), 1);
    assert_eq!(
        groups.items[0]["status"]["count"], 2,
        "the Rejected one counts too"
    );
    assert_eq!(groups.items[0]["status"]["latest"], "x2");
    let quota = r.get(&QuotaKind, "ns", "q").await.expect("quota");
    assert_eq!(quota["status"]["used"]["count"], "1");
}

#[tokio::test]
async fn a_watch_from_a_revision_replays_then_follows() {
    let f = fixture();
    let r = &f.registry;
    create(r, &CoredumpKind, coredump("w0", json!({}), None))
        .await
        .expect("create");
    let from = r.store.durable_rv();
    create(r, &CoredumpKind, coredump("w1", json!({}), None))
        .await
        .expect("create");
    let opts = ListOptions {
        resource_version: Some(from.to_string()),
        timeout_seconds: Some(5),
        ..Default::default()
    };
    let mut rx = watch::start(
        Arc::clone(r),
        Arc::new(CoredumpKind),
        Some("ns".into()),
        opts,
    )
    .expect("watch");
    create(r, &CoredumpKind, coredump("w2", json!({}), None))
        .await
        .expect("create");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("open");
        if let WatchItem::Event { object, .. } = item {
            seen.push(str_at(&object, "/metadata/name").unwrap_or_default());
        }
    }
    assert_eq!(seen, ["w1", "w2"], "replayed after the revision, then live");
}
