//! Discovery documents: what `/apis`, `/apis/coredump.io` and `/apis/coredump.io/v1alpha1`
//! answer, built from the [`KindInfo`] constants.

use serde_json::{json, Value};

use crate::types::{KindInfo, KINDS};
use crate::{API_VERSION, GROUP, VERSION};

/// `GroupVersionForDiscovery` of the only version.
fn group_version() -> Value {
    json!({ "groupVersion": API_VERSION, "version": VERSION })
}

/// The `APIGroup` body (without `kind`/`apiVersion`, as inside an `APIGroupList`).
fn group_body() -> Value {
    json!({
        "name": GROUP,
        "versions": [group_version()],
        "preferredVersion": group_version(),
    })
}

/// `APIResource` entries of one kind: the resource, then its subresources. Every entry has a
/// `kind`; client-go drops subresources without one when it converts legacy discovery.
fn api_resources(info: &KindInfo) -> Vec<Value> {
    let mut entries = vec![json!({
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": info.verbs,
        "shortNames": info.short_names,
        "categories": info.categories,
    })];
    entries.extend(info.subresources.iter().map(|sub| {
        json!({
            "name": format!("{}/{}", info.plural, sub.name),
            "singularName": "",
            "namespaced": info.namespaced,
            "kind": sub.kind,
            "verbs": sub.verbs,
        })
    }));
    entries
}

/// The `APIResourceList` served at `/apis/coredump.io/v1alpha1`.
pub fn api_resource_list() -> Value {
    let resources: Vec<Value> = KINDS.iter().flat_map(|k| api_resources(k)).collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": resources,
    })
}

/// The `APIGroup` served at `/apis/coredump.io`.
pub fn api_group() -> Value {
    let mut group = group_body();
    if let Some(obj) = group.as_object_mut() {
        obj.insert("kind".into(), "APIGroup".into());
        obj.insert("apiVersion".into(), "v1".into());
    }
    group
}

/// The `APIGroupList` served at `/apis` (only this server's group).
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_body()],
    })
}

/// Media type parameters a client sends in `Accept` to ask for [`aggregated_discovery`]
/// (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`); answer with the
/// same `Content-Type`.
pub const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `{group, version, kind}` of this group.
fn response_kind(kind: &str) -> Value {
    json!({ "group": GROUP, "version": VERSION, "kind": kind })
}

/// `APIResourceDiscovery` of one kind.
fn resource_discovery(info: &KindInfo) -> Value {
    let subresources: Vec<Value> = info
        .subresources
        .iter()
        .map(|sub| {
            json!({
                "subresource": sub.name,
                "responseKind": response_kind(sub.kind),
                "verbs": sub.verbs,
            })
        })
        .collect();
    json!({
        "resource": info.plural,
        "responseKind": response_kind(info.kind),
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": info.singular,
        "verbs": info.verbs,
        "shortNames": info.short_names,
        "categories": info.categories,
        "subresources": subresources,
    })
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for
/// `/apis`, served when the client asks for [`AGGREGATED_DISCOVERY_CONTENT_TYPE`].
pub fn aggregated_discovery() -> Value {
    let resources: Vec<Value> = KINDS.iter().map(|k| resource_discovery(k)).collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [{
            "metadata": { "name": GROUP },
            "versions": [{
                "version": VERSION,
                "resources": resources,
                "freshness": "Current",
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIGroupList, APIResourceList};

    #[test]
    fn resource_list_decodes_as_kubernetes_type() {
        let list: APIResourceList =
            serde_json::from_value(api_resource_list()).expect("APIResourceList");
        assert_eq!(list.group_version, "coredump.io/v1alpha1");
        let names: Vec<&str> = list.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "coredumps",
                "coredumps/status",
                "coredumps/download",
                "coredumps/upload",
                "coredumpquotas",
                "coredumpquotas/status",
                "crashgroups",
            ]
        );
        let find = |n: &str| list.resources.iter().find(|r| r.name == n).expect(n);
        let coredumps = find("coredumps");
        assert_eq!(coredumps.kind, "Coredump");
        assert_eq!(coredumps.singular_name, "coredump");
        assert!(coredumps.namespaced);
        assert_eq!(
            coredumps.short_names.as_deref(),
            Some(&["cdump".to_owned()][..])
        );
        assert_eq!(
            coredumps.categories.as_deref(),
            Some(&["cores".to_owned()][..])
        );
        assert_eq!(
            coredumps.verbs,
            [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ]
        );
        assert_eq!(find("coredumps/download").verbs, ["get"]);
        assert_eq!(find("coredumps/upload").verbs, ["update"]);
        assert_eq!(find("coredumps/status").verbs, ["get", "patch", "update"]);
        assert_eq!(
            find("coredumpquotas").short_names.as_deref(),
            Some(&["cdquota".to_owned()][..])
        );
    }

    #[test]
    fn every_subresource_has_a_kind() {
        for r in api_resource_list()["resources"].as_array().expect("array") {
            let kind = r["kind"].as_str().unwrap_or_default();
            assert!(!kind.is_empty(), "{r}");
        }
        let expected = [
            ("coredumps/status", "Coredump"),
            ("coredumps/download", "Coredump"),
            ("coredumps/upload", "Coredump"),
            ("coredumpquotas/status", "CoredumpQuota"),
        ];
        let list = api_resource_list();
        for (name, kind) in expected {
            let entry = list["resources"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["name"] == name))
                .expect(name);
            assert_eq!(entry["kind"], kind, "{name}");
        }
        // Aggregated discovery: every subresource has a responseKind with a kind.
        let agg = aggregated_discovery();
        for res in agg["items"][0]["versions"][0]["resources"]
            .as_array()
            .expect("resources")
        {
            assert_eq!(res["responseKind"]["group"], "coredump.io");
            for sub in res["subresources"].as_array().expect("subresources") {
                let kind = sub["responseKind"]["kind"].as_str().unwrap_or_default();
                assert!(!kind.is_empty(), "{sub}");
                assert_eq!(sub["responseKind"]["version"], "v1alpha1");
            }
        }
    }

    #[test]
    fn aggregated_discovery_shape() {
        let agg = aggregated_discovery();
        assert_eq!(agg["kind"], "APIGroupDiscoveryList");
        assert_eq!(agg["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = agg["items"].as_array().expect("items");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "coredump.io");
        let version = &items[0]["versions"][0];
        assert_eq!(version["version"], "v1alpha1");
        assert_eq!(version["freshness"], "Current");
        let coredumps = &version["resources"][0];
        assert_eq!(coredumps["resource"], "coredumps");
        assert_eq!(coredumps["scope"], "Namespaced");
        assert_eq!(coredumps["singularResource"], "coredump");
        assert_eq!(coredumps["responseKind"]["kind"], "Coredump");
        let subs: Vec<&str> = coredumps["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .filter_map(|s| s["subresource"].as_str())
            .collect();
        assert_eq!(subs, ["status", "download", "upload"]);
        assert_eq!(version["resources"][1]["resource"], "coredumpquotas");
    }

    #[test]
    fn group_documents_decode_as_kubernetes_types() {
        let group: APIGroup = serde_json::from_value(api_group()).expect("APIGroup");
        assert_eq!(group.name, "coredump.io");
        assert_eq!(
            group.preferred_version.map(|v| v.group_version),
            Some("coredump.io/v1alpha1".to_owned())
        );
        assert_eq!(group.versions.len(), 1);
        let list: APIGroupList = serde_json::from_value(api_group_list()).expect("APIGroupList");
        assert_eq!(list.groups.len(), 1);
        assert_eq!(list.groups[0].versions[0].version, "v1alpha1");
        assert_eq!(api_group()["kind"], "APIGroup");
    }
}
