//! The `paths` of the OpenAPI documents: one operation per route the server serves, described
//! once and rendered for Swagger 2.0 or OpenAPI 3.0.

use serde_json::{json, Map, Value};

use super::Dialect;
use crate::types::{schema_name, KindInfo, KINDS};
use crate::{GROUP, VERSION};

/// JSON only: the server speaks no YAML, protobuf or CBOR.
const JSON: &[&str] = &["application/json"];
/// Lists, and watches through `?watch=true`.
const LIST_MEDIA: &[&str] = &["application/json", "application/json;stream=watch"];
/// The patch types the server applies. No strategic merge patch (that needs Go struct tags) and
/// no apply patch (no server-side apply).
pub(crate) const PATCH_MEDIA: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
];
/// Core files, in either direction.
const BINARY: &[&str] = &["application/octet-stream"];

const META_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

#[derive(Clone, Copy)]
enum Type {
    String,
    Integer,
    Boolean,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Integer => "integer",
            Type::Boolean => "boolean",
        }
    }
}

#[derive(Clone)]
struct Param {
    name: &'static str,
    location: &'static str,
    ty: Type,
    description: String,
    required: bool,
}

fn query(name: &'static str, ty: Type, description: &str) -> Param {
    Param {
        name,
        location: "query",
        ty,
        description: description.to_owned(),
        required: false,
    }
}

fn path_param(name: &'static str, description: String) -> Param {
    Param {
        name,
        location: "path",
        ty: Type::String,
        description,
        required: true,
    }
}

fn pretty() -> Param {
    query(
        "pretty",
        Type::String,
        "If 'true', the output is indented. Defaults to 'false'.",
    )
}

fn namespace() -> Param {
    path_param(
        "namespace",
        "The namespace of the objects, which is also the scope of authorization.".to_owned(),
    )
}

fn name(info: &KindInfo) -> Param {
    path_param("name", format!("Name of the {}.", info.kind))
}

fn dry_run() -> Param {
    query(
        "dryRun",
        Type::String,
        "When present, the request is processed but nothing is persisted. The only valid value \
         is All: all dry run stages are processed. Any other value is an error.",
    )
}

fn field_manager() -> Param {
    query(
        "fieldManager",
        Type::String,
        "Name of the actor or entity making the changes: at most 128 printable characters.",
    )
}

fn field_validation() -> Param {
    query(
        "fieldValidation",
        Type::String,
        "What the server does with unknown or duplicate fields in the object sent. Ignore: \
         drops them silently. Warn (the default): drops them and reports each in a Warning \
         header. Strict: fails the request with a BadRequest error listing them.",
    )
}

fn write_params() -> Vec<Param> {
    vec![dry_run(), field_manager(), field_validation()]
}

/// Options of list and watch requests.
fn list_params() -> Vec<Param> {
    vec![
        query(
            "allowWatchBookmarks",
            Type::Boolean,
            "With watch, asks for BOOKMARK events, which carry only a resourceVersion, so that \
             a client can resume a watch from a recent version.",
        ),
        query(
            "continue",
            Type::String,
            "The continue token of the previous page of a list made with limit, to get the \
             next page. Tokens expire: an expired one is answered with 410 Gone, after which \
             the client restarts the list.",
        ),
        query(
            "fieldSelector",
            Type::String,
            "Restricts the result to objects whose fields match, e.g. metadata.name=foo. \
             Defaults to everything.",
        ),
        query(
            "labelSelector",
            Type::String,
            "Restricts the result to objects whose labels match, e.g. coredump.io/pod=web-0. \
             Defaults to everything.",
        ),
        query(
            "limit",
            Type::Integer,
            "Most objects to return. If there are more, the list's metadata.continue holds a \
             token for the next page; the pages together are a consistent snapshot.",
        ),
        query(
            "resourceVersion",
            Type::String,
            "Which version of the collection to serve: unset for the most recent, \"0\" for any, \
             or a version, interpreted according to resourceVersionMatch. For a watch, the \
             version to send changes after.",
        ),
        query(
            "resourceVersionMatch",
            Type::String,
            "How resourceVersion applies to a list: NotOlderThan (at least as new) or Exact.",
        ),
        query(
            "sendInitialEvents",
            Type::Boolean,
            "With watch, starts the stream with an ADDED event for every current object, \
             followed by a BOOKMARK annotated k8s.io/initial-events-end. Requires \
             resourceVersionMatch=NotOlderThan.",
        ),
        query(
            "timeoutSeconds",
            Type::Integer,
            "Ends the list or watch after this many seconds, whatever the activity.",
        ),
        query(
            "watch",
            Type::Boolean,
            "Streams changes (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR events) to the selected \
             objects instead of listing them.",
        ),
    ]
}

/// Options of deletions.
fn delete_params() -> Vec<Param> {
    vec![
        dry_run(),
        query(
            "gracePeriodSeconds",
            Type::Integer,
            "Seconds before the object is deleted; zero deletes at once. Objects of this API \
             are always deleted at once.",
        ),
        query(
            "orphanDependents",
            Type::Boolean,
            "Deprecated: use propagationPolicy. Whether dependents are orphaned.",
        ),
        query(
            "propagationPolicy",
            Type::String,
            "Whether and how the garbage collector deletes dependents: Orphan, Background or \
             Foreground.",
        ),
    ]
}

/// Options of deleting a collection: which objects, and how.
fn delete_collection_params() -> Vec<Param> {
    let mut params = delete_params();
    params.extend(list_params().into_iter().filter(|p| {
        !matches!(
            p.name,
            "allowWatchBookmarks" | "watch" | "sendInitialEvents"
        )
    }));
    params.sort_by_key(|p| p.name);
    params
}

/// A request or response body.
#[derive(Clone)]
enum Payload {
    /// JSON described by a schema of the document.
    Schema(String),
    /// Raw bytes (core files).
    Binary,
}

struct Response {
    code: &'static str,
    description: &'static str,
    payload: Option<(Payload, &'static [&'static str])>,
}

fn ok(
    code: &'static str,
    description: &'static str,
    schema: &str,
    media: &'static [&'static str],
) -> Response {
    Response {
        code,
        description,
        payload: Some((Payload::Schema(schema.to_owned()), media)),
    }
}

struct Operation {
    method: &'static str,
    operation_id: String,
    description: String,
    action: &'static str,
    kind: &'static str,
    params: Vec<Param>,
    body: Option<(Payload, &'static [&'static str], bool)>,
    responses: Vec<Response>,
}

struct PathItem {
    path: String,
    params: Vec<Param>,
    operations: Vec<Operation>,
}

/// `coredump.io` as in operation IDs: each dot- or dash-separated part capitalized.
fn group_id() -> String {
    GROUP
        .split(['.', '-'])
        .map(capitalize)
        .collect::<Vec<_>>()
        .concat()
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Operation ID in Kubernetes' form: verb, group, version, then the rest.
fn op_id(verb: &str, rest: &str) -> String {
    format!("{verb}{}{}{rest}", group_id(), capitalize(VERSION))
}

/// The tag grouping this group-version's operations, as Kubernetes names it.
pub(crate) fn tag() -> String {
    let mut id = group_id();
    id[..1].make_ascii_lowercase();
    format!("{id}_{VERSION}")
}

fn api_prefix() -> String {
    format!("/apis/{GROUP}/{VERSION}")
}

/// The routes of one kind.
fn kind_paths(info: &KindInfo) -> Vec<PathItem> {
    let kind = info.kind;
    let object = schema_name(kind);
    let list = schema_name(info.list_kind);
    let status = format!("{META_V1}Status");
    let delete_options = format!("{META_V1}DeleteOptions");
    let patch = format!("{META_V1}Patch");
    let namespaced = format!("{}/namespaces/{{namespace}}/{}", api_prefix(), info.plural);
    let item = format!("{namespaced}/{{name}}");
    let unauthorized = || Response {
        code: "401",
        description: "Unauthorized",
        payload: None,
    };
    let read = |sub: &str, what: &str| Operation {
        method: "get",
        operation_id: op_id("read", &format!("Namespaced{kind}{sub}")),
        description: format!("read {what}the specified {kind}"),
        action: "get",
        kind,
        params: vec![],
        body: None,
        responses: vec![ok("200", "OK", &object, JSON), unauthorized()],
    };
    let replace = |sub: &str, what: &str| Operation {
        method: "put",
        operation_id: op_id("replace", &format!("Namespaced{kind}{sub}")),
        description: format!("replace {what}the specified {kind}"),
        action: "put",
        kind,
        params: write_params(),
        body: Some((Payload::Schema(object.clone()), JSON, true)),
        responses: vec![
            ok("200", "OK", &object, JSON),
            ok("201", "Created", &object, JSON),
            unauthorized(),
        ],
    };
    let patch_op = |sub: &str, what: &str| Operation {
        method: "patch",
        operation_id: op_id("patch", &format!("Namespaced{kind}{sub}")),
        description: format!(
            "partially update {what}the specified {kind} with a JSON patch or a JSON merge \
             patch"
        ),
        action: "patch",
        kind,
        params: write_params(),
        body: Some((Payload::Schema(patch.clone()), PATCH_MEDIA, true)),
        responses: vec![
            ok("200", "OK", &object, JSON),
            ok("201", "Created", &object, JSON),
            unauthorized(),
        ],
    };

    let mut items = vec![
        PathItem {
            path: namespaced.clone(),
            params: vec![namespace(), pretty()],
            operations: vec![
                Operation {
                    method: "get",
                    operation_id: op_id("list", &format!("Namespaced{kind}")),
                    description: format!("list or watch objects of kind {kind}"),
                    action: "list",
                    kind,
                    params: list_params(),
                    body: None,
                    responses: vec![ok("200", "OK", &list, LIST_MEDIA), unauthorized()],
                },
                Operation {
                    method: "post",
                    operation_id: op_id("create", &format!("Namespaced{kind}")),
                    description: format!("create a {kind}"),
                    action: "post",
                    kind,
                    params: write_params(),
                    body: Some((Payload::Schema(object.clone()), JSON, true)),
                    responses: vec![
                        ok("200", "OK", &object, JSON),
                        ok("201", "Created", &object, JSON),
                        ok("202", "Accepted", &object, JSON),
                        unauthorized(),
                    ],
                },
                Operation {
                    method: "delete",
                    operation_id: op_id("delete", &format!("CollectionNamespaced{kind}")),
                    description: format!("delete collection of {kind}"),
                    action: "deletecollection",
                    kind,
                    params: delete_collection_params(),
                    body: Some((Payload::Schema(delete_options.clone()), JSON, false)),
                    responses: vec![ok("200", "OK", &status, JSON), unauthorized()],
                },
            ],
        },
        PathItem {
            path: item.clone(),
            params: vec![name(info), namespace(), pretty()],
            operations: vec![
                read("", ""),
                replace("", ""),
                patch_op("", ""),
                Operation {
                    method: "delete",
                    operation_id: op_id("delete", &format!("Namespaced{kind}")),
                    description: format!("delete a {kind}"),
                    action: "delete",
                    kind,
                    params: delete_params(),
                    body: Some((Payload::Schema(delete_options.clone()), JSON, false)),
                    responses: vec![
                        ok("200", "OK", &status, JSON),
                        ok("202", "Accepted", &status, JSON),
                        unauthorized(),
                    ],
                },
            ],
        },
        PathItem {
            path: format!("{}/{}", api_prefix(), info.plural),
            params: vec![pretty()],
            operations: vec![Operation {
                method: "get",
                operation_id: op_id("list", &format!("{kind}ForAllNamespaces")),
                description: format!("list or watch objects of kind {kind} in all namespaces"),
                action: "list",
                kind,
                params: list_params(),
                body: None,
                responses: vec![ok("200", "OK", &list, LIST_MEDIA), unauthorized()],
            }],
        },
    ];

    // Only the operations the kind supports (CrashGroups are read-only to clients).
    for item in &mut items {
        item.operations
            .retain(|op| info.verbs.contains(&verb_of(op.action)));
    }
    items.retain(|item| !item.operations.is_empty());

    for sub in info.subresources {
        let path = format!("{item}/{}", sub.name);
        let params = vec![name(info), namespace(), pretty()];
        let operations = match sub.name {
            "status" => vec![
                read("Status", "status of "),
                replace("Status", "status of "),
                patch_op("Status", "status of "),
            ],
            "download" => vec![Operation {
                method: "get",
                operation_id: op_id("read", &format!("Namespaced{kind}Download")),
                description: format!(
                    "download the core file of the specified {kind}, uncompressed. Supports \
                     Range requests; fetch large cores in ranges, as proxied requests are cut \
                     after the API server's request timeout"
                ),
                action: "get",
                kind,
                params: vec![Param {
                    name: "Range",
                    location: "header",
                    ty: Type::String,
                    description: "Bytes to fetch, e.g. bytes=0-1048575 (RFC 9110).".to_owned(),
                    required: false,
                }],
                body: None,
                responses: vec![
                    Response {
                        code: "200",
                        description: "OK",
                        payload: Some((Payload::Binary, BINARY)),
                    },
                    Response {
                        code: "206",
                        description: "Partial Content",
                        payload: Some((Payload::Binary, BINARY)),
                    },
                    unauthorized(),
                ],
            }],
            "upload" => vec![Operation {
                method: "put",
                operation_id: op_id("replace", &format!("Namespaced{kind}Upload")),
                description: format!(
                    "upload the core file of the specified {kind}; the server checks it against \
                     spec.size and spec.sha256 and the namespace's CoredumpQuota, and answers \
                     with the updated {kind}"
                ),
                action: "put",
                kind,
                params: vec![],
                body: Some((Payload::Binary, BINARY, true)),
                responses: vec![ok("200", "OK", &object, JSON), unauthorized()],
            }],
            // A subresource added to KindInfo without an operation here shows up in discovery
            // only; the test `every_discovered_route_has_a_path` catches that.
            _ => vec![],
        };
        if !operations.is_empty() {
            items.push(PathItem {
                path,
                params,
                operations,
            });
        }
    }
    items
}

/// The Kubernetes verb of an operation's `x-kubernetes-action`.
fn verb_of(action: &str) -> &str {
    match action {
        "post" => "create",
        "put" => "update",
        other => other,
    }
}

/// `GET /apis/coredump.io/v1alpha1/`: the APIResourceList.
fn resources_path() -> PathItem {
    PathItem {
        path: format!("{}/", api_prefix()),
        params: vec![],
        operations: vec![Operation {
            method: "get",
            operation_id: op_id("get", "APIResources"),
            description: "get available resources".to_owned(),
            action: "",
            kind: "",
            params: vec![],
            body: None,
            responses: vec![
                ok("200", "OK", &format!("{META_V1}APIResourceList"), JSON),
                Response {
                    code: "401",
                    description: "Unauthorized",
                    payload: None,
                },
            ],
        }],
    }
}

fn render_param(p: &Param, dialect: Dialect) -> Value {
    let mut v = json!({
        "name": p.name,
        "in": p.location,
        "description": p.description,
    });
    if p.required {
        v["required"] = true.into();
    }
    match dialect {
        Dialect::V2 => v["type"] = p.ty.name().into(),
        Dialect::V3 => v["schema"] = json!({ "type": p.ty.name() }),
    }
    v
}

fn payload_schema(payload: &Payload, dialect: Dialect) -> Value {
    match payload {
        Payload::Schema(name) => json!({ "$ref": dialect.reference(name) }),
        // Swagger 2.0's `file` type is for forms; Kubernetes writes bytes as strings too.
        Payload::Binary => json!({ "type": "string", "format": "binary" }),
    }
}

fn media_map(media: &[&str], schema: &Value) -> Value {
    let map: Map<String, Value> = media
        .iter()
        .map(|m| ((*m).to_owned(), json!({ "schema": schema })))
        .collect();
    Value::Object(map)
}

fn render_operation(op: &Operation, dialect: Dialect) -> Value {
    let mut params: Vec<Value> = op.params.iter().map(|p| render_param(p, dialect)).collect();
    let mut v = json!({
        "operationId": op.operation_id,
        "description": op.description,
        "tags": [tag()],
    });
    let mut responses = Map::new();
    let mut produces: Vec<&str> = Vec::new();
    for r in &op.responses {
        let mut response = json!({ "description": r.description });
        if let Some((payload, media)) = &r.payload {
            let schema = payload_schema(payload, dialect);
            match dialect {
                Dialect::V2 => {
                    response["schema"] = schema;
                    for m in *media {
                        if !produces.contains(m) {
                            produces.push(m);
                        }
                    }
                }
                Dialect::V3 => response["content"] = media_map(media, &schema),
            }
        }
        responses.insert(r.code.to_owned(), response);
    }
    v["responses"] = Value::Object(responses);

    if let Some((payload, media, required)) = &op.body {
        let schema = payload_schema(payload, dialect);
        match dialect {
            Dialect::V2 => {
                params.push(json!({
                    "name": "body",
                    "in": "body",
                    "required": required,
                    "schema": schema,
                }));
                v["consumes"] = json!(media);
            }
            Dialect::V3 => {
                v["requestBody"] = json!({
                    "content": media_map(media, &schema),
                    "required": required,
                });
            }
        }
    }
    if dialect == Dialect::V2 {
        if !produces.is_empty() {
            v["produces"] = json!(produces);
        }
        v["schemes"] = json!(["https"]);
    }
    if !params.is_empty() {
        v["parameters"] = Value::Array(params);
    }
    if !op.action.is_empty() {
        v["x-kubernetes-action"] = op.action.into();
        v["x-kubernetes-group-version-kind"] =
            json!({ "group": GROUP, "version": VERSION, "kind": op.kind });
    }
    v
}

/// The `paths` object.
pub(crate) fn paths(dialect: Dialect) -> Value {
    let mut items = vec![resources_path()];
    for info in KINDS {
        items.extend(kind_paths(info));
    }
    let mut paths = Map::new();
    for item in items {
        let mut rendered = Map::new();
        if !item.params.is_empty() {
            let params: Vec<Value> = item
                .params
                .iter()
                .map(|p| render_param(p, dialect))
                .collect();
            rendered.insert("parameters".into(), Value::Array(params));
        }
        for op in &item.operations {
            rendered.insert(op.method.into(), render_operation(op, dialect));
        }
        paths.insert(item.path, Value::Object(rendered));
    }
    Value::Object(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tags() {
        assert_eq!(group_id(), "CoredumpIo");
        assert_eq!(
            op_id("list", "NamespacedCoredump"),
            "listCoredumpIoV1alpha1NamespacedCoredump"
        );
        assert_eq!(tag(), "coredumpIo_v1alpha1");
    }
}
