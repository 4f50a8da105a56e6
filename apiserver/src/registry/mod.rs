//! Kubernetes REST semantics written once, for any kind: get, list, watch, create, update,
//! patch, delete and deletecollection, with resourceVersion, preconditions, selectors,
//! paging, dry-run and the status subresource. Kinds differ only through [`Kind`];
//! admission plugs in through [`Admission`]: one [`Chain`] whose members declare the kinds
//! and [`Operation`]s they handle, run before the transaction on the request
//! ([`Admission::admit`]) and inside the write transaction (create, update, delete).

pub mod kinds;
#[cfg(test)]
mod rest_tests;
pub mod select;
pub mod watch;

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Cause, Target};
use crate::store::{Event, EventType, Key, MetadataStore, Scope, StoreError, Tx};
use coredump_openapi::CoredumpPhase;
use coredump_openapi::{FieldError, GROUP};
pub use select::{FieldSelector, LabelSelector};

/// How one kind differs from another.
pub trait Kind: Send + Sync {
    fn info(&self) -> &'static coredump_openapi::KindInfo;
    /// Decodes into the typed object (rejecting wrong types) and returns it re-encoded
    /// (unknown fields dropped) with the paths of the unknown fields.
    fn decode(&self, v: &Value) -> Result<(Value, Vec<String>), String>;
    /// Validation for create and update.
    fn validate(&self, obj: &Value) -> Vec<FieldError>;
    /// Rules on changes, e.g. an immutable spec.
    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError>;
    /// Sets what the server owns on a new object (e.g. the initial status).
    fn prepare_create(&self, obj: &mut Value);
    /// Fields usable in a field selector besides metadata.name and metadata.namespace.
    fn selectable_fields(&self) -> &'static [&'static str];
    fn field(&self, obj: &Value, field: &str) -> Option<String>;
    /// `Table` column definitions and one row's cells.
    fn columns(&self) -> Value;
    fn cells(&self, obj: &Value) -> Vec<Value>;
}

/// Who is asking and how: the authenticated user and the request's options.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    pub user: crate::auth::UserInfo,
    pub dry_run: bool,
    /// Warnings for the `Warning` header (e.g. unknown fields under fieldValidation=Warn).
    pub warnings: Vec<String>,
}

/// What a request does, as admission members declare what they handle (k8s.io/apiserver's
/// `admission.Operation`, with the transfer subresources as operations of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A read of one object by name.
    Get,
    Create,
    /// A PUT of the object or of its status. In the transaction a patch is applied as an
    /// update too: [`Admission::update`] runs for both.
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// A PUT of the core (the `upload` subresource).
    Upload,
    /// A GET of the core (the `download` subresource).
    Download,
    /// A method no handler serves (answered 405 after admission).
    Other,
}

impl Operation {
    /// The operation of a request by its method, subresource and whether it names an
    /// object.
    pub fn of(method: &http::Method, subresource: Option<&str>, named: bool) -> Self {
        use http::Method;
        match (method, subresource) {
            (&Method::GET | &Method::HEAD, Some("download")) => Self::Download,
            (&Method::GET | &Method::HEAD, _) => Self::Get,
            (&Method::POST, _) => Self::Create,
            (&Method::PUT, Some("upload")) => Self::Upload,
            (&Method::PUT, _) => Self::Update,
            (&Method::PATCH, _) => Self::Patch,
            (&Method::DELETE, _) if named => Self::Delete,
            (&Method::DELETE, _) => Self::DeleteCollection,
            _ => Self::Other,
        }
    }
}

/// What request-phase admission sees of a request.
pub struct Attributes<'a> {
    pub kind: &'a dyn Kind,
    pub operation: Operation,
    pub namespace: &'a str,
    /// The object named in the path, if any.
    pub name: Option<&'a str>,
    pub user: &'a crate::auth::UserInfo,
    /// The request body of a create, or the object a get read; none otherwise.
    pub object: Option<&'a Value>,
}

/// Admission: [`Self::admit`] on the request before any transaction (it may read, e.g. a
/// Pod from the cluster), and the transaction hooks inside the write transaction so their
/// reads and writes (e.g. quota usage) commit atomically with the object. A member runs
/// only for the kinds and operations [`Self::handles`] accepts.
pub trait Admission: Send + Sync {
    /// Whether this member runs for `op` on `kind` (k8s.io/apiserver's `Handles`).
    fn handles(&self, _kind: &dyn Kind, _op: Operation) -> bool {
        true
    }
    /// Request-phase admission, before the handler reads or writes the store for the
    /// request (for a create: once its body is read; for a get: on the object read).
    fn admit<'a>(
        &'a self,
        _attrs: &'a Attributes<'a>,
        _registry: &'a Registry,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn create(
        &self,
        _tx: &mut Tx<'_>,
        _kind: &dyn Kind,
        _obj: &mut Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        Ok(())
    }
    fn update(
        &self,
        _tx: &mut Tx<'_>,
        _kind: &dyn Kind,
        _old: &Value,
        _new: &mut Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        Ok(())
    }
    fn delete(
        &self,
        _tx: &mut Tx<'_>,
        _kind: &dyn Kind,
        _obj: &Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        Ok(())
    }
    /// Last in every transaction's body, after its writes: keeps state derived from them
    /// (e.g. per-namespace usage) in the same transaction.
    fn prepare_commit(&self, _tx: &mut Tx<'_>) -> Result<(), ApiError> {
        Ok(())
    }
    /// After a transaction is durable: side effects outside the store.
    fn committed(&self, _events: &[Arc<Event>]) {}
    /// After [`Self::committed`], awaited before the request is answered: asynchronous
    /// side effects a client may look for right after (removing the cores of deleted
    /// objects from the blob store).
    fn finish(&self, _events: &[Arc<Event>]) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// No admission beyond validation.
pub struct NoAdmission;
impl Admission for NoAdmission {}

/// Admission members run in order, those that handle the kind and operation; the first
/// error ends the request (in the transaction: nothing of it is written).
pub struct Chain(pub Vec<Arc<dyn Admission>>);

impl Chain {
    fn members<'a>(
        &'a self,
        kind: &'a dyn Kind,
        op: Operation,
    ) -> impl Iterator<Item = &'a dyn Admission> + 'a {
        self.0
            .iter()
            .map(|a| &**a)
            .filter(move |a| a.handles(kind, op))
    }
}

impl Admission for Chain {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        registry: &'a Registry,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            for a in self.members(attrs.kind, attrs.operation) {
                a.admit(attrs, registry).await?;
            }
            Ok(())
        })
    }
    fn create(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        obj: &mut Value,
        ctx: &Ctx,
    ) -> Result<(), ApiError> {
        self.members(kind, Operation::Create)
            .try_for_each(|a| a.create(tx, kind, obj, ctx))
    }
    fn update(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        old: &Value,
        new: &mut Value,
        ctx: &Ctx,
    ) -> Result<(), ApiError> {
        self.members(kind, Operation::Update)
            .try_for_each(|a| a.update(tx, kind, old, new, ctx))
    }
    fn delete(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        obj: &Value,
        ctx: &Ctx,
    ) -> Result<(), ApiError> {
        self.members(kind, Operation::Delete)
            .try_for_each(|a| a.delete(tx, kind, obj, ctx))
    }
    fn prepare_commit(&self, tx: &mut Tx<'_>) -> Result<(), ApiError> {
        self.0.iter().try_for_each(|a| a.prepare_commit(tx))
    }
    fn committed(&self, events: &[Arc<Event>]) {
        for a in &self.0 {
            a.committed(events);
        }
    }
    fn finish(&self, events: &[Arc<Event>]) -> futures::future::BoxFuture<'static, ()> {
        let all = futures::future::join_all(self.0.iter().map(|a| a.finish(events)));
        Box::pin(async move {
            all.await;
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// How an update or patch writes: to the object or its status, and how strictly it
/// treats unknown fields.
#[derive(Clone, Copy, Debug)]
pub struct WriteOpts {
    pub status_only: bool,
    pub validation: FieldValidation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
}

/// Query options of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label: LabelSelector,
    pub field: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub allow_bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub send_initial_events: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

pub struct Registry {
    pub store: Arc<dyn MetadataStore>,
    kinds: Vec<Arc<dyn Kind>>,
    admission: Arc<dyn Admission>,
}

/// kube-apiserver's alphabet for generated name suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Registry {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        kinds: Vec<Arc<dyn Kind>>,
        admission: Arc<dyn Admission>,
    ) -> Self {
        Self {
            store,
            kinds,
            admission,
        }
    }

    /// A store transaction followed by admission's post-commit hook. `f` may run more
    /// than once (the store re-runs it on conflict): it must only read and write through
    /// its `Tx`.
    pub async fn commit<T: Send>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, ApiError> + Send,
    ) -> Result<(T, Vec<Arc<Event>>), ApiError> {
        let admission = &self.admission;
        let (value, events) = self
            .store
            .transact(|tx| {
                let value = f(tx)?;
                admission.prepare_commit(tx)?;
                Ok::<_, ApiError>(value)
            })
            .await?;
        self.admission.committed(&events);
        // Spawned: it completes even if this request is cancelled meanwhile.
        let _ = tokio::spawn(self.admission.finish(&events)).await;
        Ok((value, events))
    }

    /// Request-phase admission (see [`Admission::admit`]).
    pub async fn admit(&self, attrs: &Attributes<'_>) -> Result<(), ApiError> {
        self.admission.admit(attrs, self).await
    }

    pub fn kind(&self, resource: &str) -> Option<Arc<dyn Kind>> {
        self.kinds
            .iter()
            .find(|k| k.info().plural == resource)
            .cloned()
    }

    pub async fn get(&self, kind: &dyn Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = Key::new(kind.info().plural, ns, name);
        self.store
            .get(&key)?
            .map(|o| with_type_meta(kind, o))
            .ok_or_else(|| ApiError::not_found(target(kind, name)))
    }

    /// The field value a field selector reads.
    pub fn field_of(kind: &dyn Kind, obj: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => str_at(obj, "/metadata/name"),
            "metadata.namespace" => str_at(obj, "/metadata/namespace"),
            _ => kind.field(obj, field),
        }
    }

    pub fn supported_fields(kind: &dyn Kind) -> Vec<&'static str> {
        let mut f = vec!["metadata.name", "metadata.namespace"];
        f.extend_from_slice(kind.selectable_fields());
        f
    }

    pub fn matches(kind: &dyn Kind, opts: &ListOptions, obj: &Value) -> bool {
        opts.label.matches_object(obj) && opts.field.matches(|f| Self::field_of(kind, obj, f))
    }

    pub async fn list(
        &self,
        kind: &dyn Kind,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let scope = Scope {
            resource: kind.info().plural.to_string(),
            namespace: ns.map(str::to_string),
        };
        let (at, start) = match &opts.continue_token {
            Some(token) => {
                let c = Continue::decode(token)?;
                (Some(c.rv), Some(c.start))
            }
            None => (self.requested_rv(opts)?, None),
        };
        // Objects that cannot match the label selector are skipped before decoding.
        let matcher = opts.label.stored_matcher();
        let (rv, objects) = self.store.list(&scope, at, &|b: &[u8]| matcher.matches(b)).map_err(|e| match (e, &opts.continue_token) {
            (StoreError::Compacted { .. }, Some(_)) => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            (e, _) => e.into(),
        })?;
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0u64;
        let filtered = objects
            .into_iter()
            .filter(|(k, _)| {
                start
                    .as_ref()
                    .is_none_or(|s| k.namespace.clone() + "\0" + &k.name > *s)
            })
            .filter(|(_, o)| Self::matches(kind, opts, o));
        for (k, o) in filtered {
            match opts.limit {
                Some(limit) if limit > 0 && items.len() >= limit => {
                    if next.is_none() {
                        next = Some(Continue {
                            rv,
                            start: items_last_key(&items),
                        });
                    }
                    remaining += 1;
                    let _ = k;
                }
                _ => items.push(with_type_meta(kind, o)),
            }
        }
        let selectors = !opts.label.is_empty() || !opts.field.is_empty();
        Ok(ListResult {
            items,
            resource_version: rv,
            continue_token: next.map(|c| c.encode()),
            remaining: (remaining > 0 && !selectors).then_some(remaining),
        })
    }

    /// The revision a list without `continue` reads at.
    fn requested_rv(&self, opts: &ListOptions) -> Result<Option<u64>, ApiError> {
        let Some(rv) = opts.resource_version.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let n: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
        let exact = match opts.resource_version_match.as_deref() {
            Some("Exact") => true,
            None | Some("") | Some("NotOlderThan") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )))
            }
        };
        // Reads see durable revisions only; a newer one (exact or as a lower bound) is
        // not there yet: kube-apiserver waits briefly, then answers 504.
        let durable = self.store.durable_rv();
        if n > durable {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {n}, current: {durable}"),
            ));
        }
        Ok(exact.then_some(n))
    }

    pub async fn create(
        &self,
        kind: &dyn Kind,
        ns: &str,
        body: Value,
        validation: FieldValidation,
        ctx: &mut Ctx,
    ) -> Result<Value, ApiError> {
        let mut obj = self.decode_body(kind, &body, ns, None, validation, ctx)?;
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(prefix) => generate_name(prefix),
                None => {
                    return Err(ApiError::invalid(
                        target(kind, ""),
                        kind.info().kind,
                        vec![cause(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ))
                }
            },
        };
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::invalid(
                target(kind, &name),
                kind.info().kind,
                vec![cause(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: resourceVersion should not be set on objects to be created",
                )],
            ));
        }
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(server_owned);
        }
        kind.prepare_create(&mut obj);
        self.check_valid(kind, &name, &obj)?;

        let key = Key::new(kind.info().plural, ns, &name);
        let dry_run = ctx.dry_run;
        let admission = Arc::clone(&self.admission);
        let ctx_ref: &Ctx = ctx;
        let (admitted, events) = self
            .commit(|tx| {
                if tx.get(&key)?.is_some() {
                    return Err(ApiError::already_exists(target(kind, &name)));
                }
                // Admission changes the object: each run starts from the request's.
                let mut obj = obj.clone();
                admission.create(tx, kind, &mut obj, ctx_ref)?;
                if dry_run {
                    tx.discard();
                } else {
                    tx.put(key.clone(), obj.clone());
                }
                Ok::<_, ApiError>(obj)
            })
            .await?;
        let stored = if dry_run {
            Some(admitted)
        } else {
            written(&events, &key)
        };
        stored
            .map(|o| with_type_meta(kind, o))
            .ok_or_else(|| ApiError::internal("object vanished after create"))
    }

    /// PUT of the object or of its `status`.
    pub async fn update(
        &self,
        kind: &dyn Kind,
        ns: &str,
        name: &str,
        body: Value,
        w: WriteOpts,
        ctx: &mut Ctx,
    ) -> Result<Value, ApiError> {
        let new = self.decode_body(kind, &body, ns, Some(name), w.validation, ctx)?;
        self.write_existing(
            kind,
            ns,
            name,
            ctx,
            move |_current| Ok(new.clone()),
            w.status_only,
        )
        .await
    }

    pub async fn patch(
        &self,
        kind: &dyn Kind,
        ns: &str,
        name: &str,
        (patch_type, patch): (PatchType, Value),
        w: WriteOpts,
        ctx: &mut Ctx,
    ) -> Result<Value, ApiError> {
        let mut decode_ctx = ctx.clone();
        let warned = decode_ctx.warnings.len();
        let result = self
            .write_existing(
                kind,
                ns,
                name,
                ctx,
                |current| {
                    // Run again on conflict: only the last run's warnings count.
                    decode_ctx.warnings.truncate(warned);
                    let mut doc = current.clone();
                    match patch_type {
                        PatchType::Merge => json_patch::merge(&mut doc, &patch),
                        PatchType::Json => {
                            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                            // A failed `test` operation or a bad path: the patch does not apply.
                            json_patch::patch(&mut doc, &ops).map_err(|e| {
                                ApiError::new(
                                    422,
                                    "Invalid",
                                    format!("the server rejected our request due to an error in our request: {e}"),
                                )
                            })?;
                        }
                    }
                    // A resourceVersion the patch set is a precondition; write_existing checks
                    // it against the current object.
                    self.decode_body(kind, &doc, ns, Some(name), w.validation, &mut decode_ctx)
                },
                w.status_only,
            )
            .await;
        ctx.warnings.extend(decode_ctx.warnings);
        result
    }

    /// Shared by update and patch: reads the current object inside the transaction, builds
    /// the new one with `make`, applies Kubernetes' update rules, and stores it.
    async fn write_existing(
        &self,
        kind: &dyn Kind,
        ns: &str,
        name: &str,
        ctx: &Ctx,
        mut make: impl FnMut(&Value) -> Result<Value, ApiError> + Send,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let key = Key::new(kind.info().plural, ns, name);
        let admission = Arc::clone(&self.admission);
        let (result, events) = self
            .commit(|tx| {
                let current = tx.get(&key)?.ok_or_else(|| ApiError::not_found(target(kind, name)))?;
                let requested = make(&current)?;
                let mut new = merge_update(kind, &current, requested.clone(), status_only);
                let want_rv = str_at(&requested, "/metadata/resourceVersion").filter(|s| !s.is_empty());
                if let Some(want) = want_rv {
                    if Some(&want) != str_at(&current, "/metadata/resourceVersion").as_ref() {
                        return Err(ApiError::conflict(
                            target(kind, name),
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ));
                    }
                }
                let errs = kind.validate_update(&current, &new);
                if !errs.is_empty() {
                    return Err(invalid(kind, name, errs));
                }
                self.check_valid(kind, name, &new)?;
                if without_rv(&new) == without_rv(&current) {
                    // No change: no new revision, as kube-apiserver does.
                    tx.discard();
                    return Ok(current);
                }
                admission.update(tx, kind, &current, &mut new, ctx)?;
                let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
                    && new
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|f| f.is_empty());
                if ctx.dry_run {
                    tx.discard();
                } else if finalized {
                    admission.delete(tx, kind, &new, ctx)?;
                    tx.delete(key.clone());
                } else {
                    tx.put(key.clone(), new.clone());
                }
                Ok(new)
            })
            .await?;
        let stored = if ctx.dry_run {
            None
        } else {
            written(&events, &key)
        };
        Ok(with_type_meta(kind, stored.unwrap_or(result)))
    }

    /// Deletes one object. With finalizers it only gets a deletionTimestamp (202).
    pub async fn delete(
        &self,
        kind: &dyn Kind,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        ctx: &Ctx,
    ) -> Result<(u16, Value), ApiError> {
        let key = Key::new(kind.info().plural, ns, name);
        let admission = Arc::clone(&self.admission);
        let ((code, obj), events) = self
            .commit(|tx| {
                let current = tx.get(&key)?.ok_or_else(|| ApiError::not_found(target(kind, name)))?;
                if let Some(uid) = pre.uid.as_deref().filter(|s| !s.is_empty()) {
                    if Some(uid) != current.pointer("/metadata/uid").and_then(Value::as_str) {
                        return Err(ApiError::conflict(
                            target(kind, name),
                            &format!(
                                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                                str_at(&current, "/metadata/uid").unwrap_or_default()
                            ),
                        ));
                    }
                }
                if let Some(rv) = pre.resource_version.as_deref().filter(|s| !s.is_empty()) {
                    if Some(rv) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                        return Err(ApiError::conflict(
                            target(kind, name),
                            &format!(
                                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                                str_at(&current, "/metadata/resourceVersion").unwrap_or_default()
                            ),
                        ));
                    }
                }
                let has_finalizers = current
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if has_finalizers {
                    let mut marked = current.clone();
                    if marked.pointer("/metadata/deletionTimestamp").is_none() {
                        if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                            m.insert("deletionGracePeriodSeconds".into(), json!(0));
                        }
                        if ctx.dry_run {
                            tx.discard();
                        } else {
                            tx.put(key.clone(), marked.clone());
                        }
                    }
                    return Ok((202, marked));
                }
                admission.delete(tx, kind, &current, ctx)?;
                if ctx.dry_run {
                    tx.discard();
                } else {
                    tx.delete(key.clone());
                }
                Ok::<_, ApiError>((200, current))
            })
            .await?;
        // The deletion's own revision, as the DELETED watch event carries it.
        let obj = events
            .iter()
            .find(|e| e.key == key)
            .map(|e| (*e.object).clone())
            .unwrap_or(obj);
        Ok((code, with_type_meta(kind, obj)))
    }

    pub async fn delete_collection(
        &self,
        kind: &dyn Kind,
        ns: Option<&str>,
        opts: &ListOptions,
        pre: &Preconditions,
        ctx: &Ctx,
    ) -> Result<Vec<Value>, ApiError> {
        let all = ListOptions {
            limit: None,
            continue_token: None,
            ..opts.clone()
        };
        let listed = self.list(kind, ns, &all).await?;
        let mut deleted = Vec::new();
        for obj in listed.items {
            let (Some(obj_ns), Some(name)) = (
                str_at(&obj, "/metadata/namespace"),
                str_at(&obj, "/metadata/name"),
            ) else {
                continue;
            };
            match self.delete(kind, &obj_ns, &name, pre, ctx).await {
                Ok((_, o)) => deleted.push(o),
                // Deleted meanwhile by someone else: the goal is reached.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Decodes a request body: type and version checks, namespace and name against the
    /// URL, typed decoding and unknown fields per `fieldValidation`.
    fn decode_body(
        &self,
        kind: &dyn Kind,
        body: &Value,
        ns: &str,
        url_name: Option<&str>,
        validation: FieldValidation,
        ctx: &mut Ctx,
    ) -> Result<Value, ApiError> {
        let info = kind.info();
        let obj = body
            .as_object()
            .ok_or_else(|| ApiError::bad_request(format!("{} in version \"v1alpha1\" cannot be handled as a {}: the body is not a JSON object", info.kind, info.kind)))?;
        if let Some(v) = obj.get("apiVersion") {
            if v.as_str() != Some(coredump_openapi::API_VERSION) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    v.as_str().unwrap_or_default(),
                    coredump_openapi::API_VERSION
                )));
            }
        }
        if let Some(k) = obj.get("kind") {
            if k.as_str() != Some(info.kind) {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({}) does not match the expected kind ({})",
                    k.as_str().unwrap_or_default(),
                    info.kind
                )));
            }
        }
        if let Some(body_ns) = body
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            if body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if let Some(url_name) = url_name {
            let body_name = body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if body_name != url_name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                )));
            }
        }
        let (decoded, unknown) = kind.decode(body).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"v1alpha1\" cannot be handled as a {}: {e}",
                info.kind, info.kind
            ))
        })?;
        if !unknown.is_empty() {
            match validation {
                FieldValidation::Strict => {
                    let list = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect::<Vec<_>>();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => ctx
                    .warnings
                    .extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
                FieldValidation::Ignore => {}
            }
        }
        Ok(decoded)
    }

    fn check_valid(&self, kind: &dyn Kind, name: &str, obj: &Value) -> Result<(), ApiError> {
        let mut errs = Vec::new();
        if let Err(msg) = coredump_openapi::types::validate_name(name) {
            errs.push(FieldError {
                field: "metadata.name".into(),
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {name:?}: {msg}"),
            });
        }
        errs.extend(kind.validate(obj));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(invalid(kind, name, errs))
        }
    }

    /// Every change after `rv`, for watch resumption.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Event>, ApiError> {
        self.store.events_after(rv).map_err(|e| match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            e => e.into(),
        })
    }
}

/// Builds the object an update stores: the main resource keeps the current status, the
/// status subresource keeps everything but the status; server-owned metadata is kept.
fn merge_update(kind: &dyn Kind, current: &Value, requested: Value, status_only: bool) -> Value {
    let has_status = kind.info().subresource("status").is_some();
    let mut new = if status_only {
        let mut n = current.clone();
        match requested.get("status") {
            Some(s) => n["status"] = s.clone(),
            None => {
                if let Some(o) = n.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        n
    } else {
        let mut n = requested;
        if has_status {
            match current.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(o) = n.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        n
    };
    let cur_meta = current
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        for owned in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match cur_meta.get(owned) {
                Some(v) => {
                    meta.insert(owned.into(), v.clone());
                }
                None => {
                    meta.remove(owned);
                }
            }
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
    }
    if !status_only && new.get("spec") != current.get("spec") {
        let generation = cur_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    new
}

/// The object a committed batch wrote at `key`, with its new resourceVersion (none when
/// the batch deleted it or left it alone): what the write answers, without reading the
/// store again (a later writer's change is not this request's answer either).
fn written(events: &[Arc<Event>], key: &Key) -> Option<Value> {
    events
        .iter()
        .find(|e| &e.key == key && e.kind != EventType::Deleted)
        .map(|e| (*e.object).clone())
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// Sets apiVersion and kind, which stored objects and list items always carry.
pub fn with_type_meta(kind: &dyn Kind, mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        let mut out = Map::new();
        out.insert("apiVersion".into(), json!(coredump_openapi::API_VERSION));
        out.insert("kind".into(), json!(kind.info().kind));
        for (k, v) in std::mem::take(o) {
            if k != "apiVersion" && k != "kind" {
                out.insert(k, v);
            }
        }
        *o = out;
    }
    obj
}

pub fn target<'a>(kind: &dyn Kind, name: &'a str) -> Target<'a> {
    Target {
        group: GROUP,
        resource: kind.info().plural,
        name,
    }
}

pub fn invalid(kind: &dyn Kind, name: &str, errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        target(kind, name),
        kind.info().kind,
        errs.into_iter()
            .map(|e| Cause {
                reason: e.reason.to_string(),
                message: e.message,
                field: e.field,
            })
            .collect(),
    )
}

fn cause(reason: &str, field: &str, message: &str) -> Cause {
    Cause {
        reason: reason.into(),
        message: message.into(),
        field: field.into(),
    }
}

pub fn str_at(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).and_then(Value::as_str).map(str::to_string)
}

/// A Coredump's `status.phase`, typed (none for a missing or unknown one).
pub fn phase_of(obj: &Value) -> Option<CoredumpPhase> {
    obj.pointer("/status/phase")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    // kube-apiserver trims the prefix so the name stays within 63 characters.
    let prefix: String = prefix.chars().take(58).collect();
    let suffix: String = (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

fn items_last_key(items: &[Value]) -> String {
    items
        .last()
        .map(|o| {
            format!(
                "{}\0{}",
                str_at(o, "/metadata/namespace").unwrap_or_default(),
                str_at(o, "/metadata/name").unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

/// The opaque `continue` token: the list's revision and the last key returned.
#[derive(Serialize, Deserialize)]
struct Continue {
    rv: u64,
    start: String,
}

impl Continue {
    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: the token is malformed")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records the operations it was run for; handles only `only`.
    struct Probe {
        only: Operation,
        seen: std::sync::Mutex<Vec<Operation>>,
    }

    impl Admission for Probe {
        fn handles(&self, _kind: &dyn Kind, op: Operation) -> bool {
            op == self.only
        }
        fn admit<'a>(
            &'a self,
            a: &'a Attributes<'a>,
            _registry: &'a Registry,
        ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
            self.seen.lock().unwrap().push(a.operation);
            Box::pin(std::future::ready(Err(ApiError::forbidden("probe"))))
        }
    }

    #[tokio::test]
    async fn the_chain_runs_only_the_members_that_handle_the_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetadataStore> =
            Arc::new(crate::store::SledStore::open(&dir.path().join("db"), 100).unwrap());
        let probe = Arc::new(Probe {
            only: Operation::Delete,
            seen: Default::default(),
        });
        let registry = Registry::new(
            store,
            vec![Arc::new(kinds::CoredumpKind)],
            Arc::new(Chain(vec![probe.clone()])),
        );
        let kind = kinds::CoredumpKind;
        let user = crate::auth::UserInfo::default();
        let attrs = |operation| Attributes {
            kind: &kind,
            operation,
            namespace: "ns",
            name: Some("a"),
            user: &user,
            object: None,
        };
        assert!(registry.admit(&attrs(Operation::Update)).await.is_ok());
        assert_eq!(
            registry
                .admit(&attrs(Operation::Delete))
                .await
                .map_err(|e| e.code),
            Err(403)
        );
        assert_eq!(*probe.seen.lock().unwrap(), [Operation::Delete]);
    }

    #[test]
    fn operations_follow_method_and_subresource() {
        use http::Method;
        let of = |m: Method, sub: Option<&str>, named: bool| Operation::of(&m, sub, named);
        assert_eq!(of(Method::GET, None, true), Operation::Get);
        assert_eq!(
            of(Method::HEAD, Some("download"), true),
            Operation::Download
        );
        assert_eq!(of(Method::GET, Some("download"), true), Operation::Download);
        assert_eq!(of(Method::POST, None, false), Operation::Create);
        assert_eq!(of(Method::PUT, None, true), Operation::Update);
        assert_eq!(of(Method::PUT, Some("status"), true), Operation::Update);
        assert_eq!(of(Method::PUT, Some("upload"), true), Operation::Upload);
        assert_eq!(of(Method::PATCH, Some("status"), true), Operation::Patch);
        assert_eq!(of(Method::DELETE, None, true), Operation::Delete);
        assert_eq!(of(Method::DELETE, None, false), Operation::DeleteCollection);
        assert_eq!(of(Method::OPTIONS, None, true), Operation::Other);
    }

    proptest! {
        /// A continue token from a client: no panic, a 400 for anything we did not write.
        #[test]
        fn any_continue_token_decodes_or_is_a_400(token in ".{0,120}") {
            if let Err(e) = Continue::decode(&token) {
                prop_assert_eq!(e.code, 400);
            }
        }

        /// Tokens we write decode to what was encoded.
        #[test]
        fn continue_tokens_round_trip(rv in any::<u64>(), start in ".{0,60}") {
            let c = Continue { rv, start: start.clone() };
            let back = Continue::decode(&c.encode()).expect("decode");
            prop_assert_eq!((back.rv, back.start), (rv, start));
        }
    }
}
