//! The steps that take one core from the spool to Stored: create the
//! `Coredump`, read it back when it exists, upload the core, and move on to
//! the next name when a name cannot be used.
//!
//! Invariants:
//! - All I/O but the core file's size goes through [`Transport`], so the
//!   whole state machine runs against a fake in the tests below.
//! - No blind retries: a transient answer (no connection, 401, 408, 429,
//!   5xx) ends the attempt at once with [`DeliverError::Transient`], and
//!   the caller backs off and calls again with the core still in the spool.
//!   403 and other 4xx answers are final for the core; a 409 race ends as
//!   [`DeliverError::Busy`], retried by the caller for that core alone, a
//!   bounded number of times.
//! - Idempotent: a new attempt uses the same names ([`coredump_name`]) in
//!   the same order, finds what an earlier one left and goes on from its
//!   phase; a core is never uploaded over another core.
//! - Bounded: at most [`MAX_NAMES`] names, and `3 ×` as many rounds when
//!   objects keep vanishing under us.
//! - The policy is the pure [`classify`].

use std::future::Future;
use std::path::Path;

use coredump_openapi::types::validate_coredump;
use coredump_openapi::{Coredump, CoredumpPhase};
use http::StatusCode;

use crate::pods::Attribution;
use crate::spool::SpoolEntry;

use super::object::{build_coredump, coredump_name};
use super::{DeliverError, Delivered, Reply};

/// Names tried per core: a name whose object is Failed (its upload expired
/// while we were away) or deleted is skipped for the next.
pub const MAX_NAMES: u32 = 4;

/// The requests [`deliver`] makes, one per step: [`ServerClient`](super::ServerClient)
/// over HTTPS, a fake in tests. An `Err` is a request that got no answer
/// (always [`DeliverError::Transient`] or [`DeliverError::Local`]); any
/// answer, whatever its status, is an `Ok`.
pub trait Transport {
    /// POST of the Coredump to namespace `ns`.
    fn create(
        &self,
        cd: &Coredump,
        ns: &str,
    ) -> impl Future<Output = Result<Reply, DeliverError>> + Send;
    /// GET of the Coredump `name`.
    fn get(&self, ns: &str, name: &str)
        -> impl Future<Output = Result<Reply, DeliverError>> + Send;
    /// PUT of the core file (exactly `len` bytes) to `name`'s upload subresource.
    fn upload(
        &self,
        ns: &str,
        name: &str,
        core: &Path,
        len: u64,
    ) -> impl Future<Output = Result<Reply, DeliverError>> + Send;
}

/// What an answer the step did not expect means for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The server cannot take anything now: pause delivery, retry later.
    Transient,
    /// A race on this core (409): retry it alone, a bounded number of times.
    Busy,
    /// Refused (403): asking again gets the same answer.
    Forbidden,
    /// The request is wrong for the server (other 4xx): final.
    Invalid,
}

/// Classifies a status code. Pure: the whole policy is this table.
pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        // A token being rotated, a slow or overloaded server.
        401 | 408 | 429 => Class::Transient,
        403 => Class::Forbidden,
        409 => Class::Busy,
        400..=499 => Class::Invalid,
        // 5xx, and anything else a proxy may invent.
        _ => Class::Transient,
    }
}

/// The error for an answer that is not what the step expected.
pub(crate) fn unexpected(what: &str, r: &Reply) -> DeliverError {
    let msg = format!("{what}: {}", r.message());
    match classify(r.status) {
        Class::Transient => DeliverError::Transient(msg),
        Class::Busy => DeliverError::Busy(msg),
        Class::Forbidden => DeliverError::Forbidden(msg),
        Class::Invalid => DeliverError::Invalid(msg),
    }
}

fn parse_coredump(r: &Reply) -> Result<Coredump, DeliverError> {
    serde_json::from_slice(&r.body)
        .map_err(|e| DeliverError::Transient(format!("the server's answer is no Coredump: {e}")))
}

fn phase(cd: &Coredump) -> Option<CoredumpPhase> {
    cd.status.as_ref().and_then(|s| s.phase)
}

/// What to do after looking at the object a name holds.
enum Next {
    Upload,
    Done(Delivered),
    /// Not usable (Failed, deleted, someone else's): try the next name.
    Skip(String),
}

fn judge(cd: &Coredump, entry: &SpoolEntry, name: &str) -> Next {
    if cd.spec.sha256 != entry.sha256 {
        return Next::Skip(format!("{name} holds another core"));
    }
    match phase(cd) {
        Some(CoredumpPhase::Pending) => Next::Upload,
        Some(CoredumpPhase::Stored) => Next::Done(Delivered::Stored {
            name: name.to_string(),
            uploaded: false,
        }),
        Some(CoredumpPhase::Rejected) => Next::Done(Delivered::Rejected {
            name: name.to_string(),
            message: cd
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default(),
        }),
        Some(CoredumpPhase::Failed) | None => Next::Skip(format!("{name} is {:?}", phase(cd))),
    }
}

/// Delivers one entry (its metadata `entry`, its core file `core`).
pub async fn deliver<T: Transport>(
    client: &T,
    entry: &SpoolEntry,
    core: &Path,
    attr: &Attribution,
    node: &str,
    analysis: Option<&coredump_openapi::types::CrashAnalysis>,
) -> Result<Delivered, DeliverError> {
    // The server checks Content-Length against spec.storedSize; a file
    // that disagrees with its metadata can never be delivered.
    let len = tokio::fs::metadata(core)
        .await
        .map_err(|e| DeliverError::Local(format!("{}: {e}", core.display())))?
        .len();
    if len != entry.stored_size {
        return Err(DeliverError::Local(format!(
            "{} has {len} bytes, its metadata says {}",
            core.display(),
            entry.stored_size
        )));
    }
    let ns = attr.namespace.as_str();
    let mut skipped = Vec::new();
    let mut attempt = 0;
    // Bounds the loop when objects keep vanishing under us.
    let mut rounds = 0;
    while attempt < MAX_NAMES && rounds < 3 * MAX_NAMES {
        rounds += 1;
        let name = coredump_name(&attr.pod_name, node, &entry.id, &entry.sha256, attempt);
        let mut cd = build_coredump(entry, attr, node, &name);
        // Computed on the node before the upload: Rejected cores carry it too.
        cd.spec.analysis = analysis.cloned();
        let errors = validate_coredump(&cd);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(DeliverError::Invalid(list.join("; ")));
        }
        let created = client.create(&cd, ns).await?;
        // Uploading to an object we could not read.
        let mut blind = false;
        let next = match created.status.as_u16() {
            200 | 201 => judge(&parse_coredump(&created)?, entry, &name),
            // Ours from an attempt whose answer was lost, most likely.
            409 if created.status_reason().as_deref() == Some("AlreadyExists") => {
                match look(client, ns, &name, entry).await? {
                    Look::Is(next) => next,
                    // Deleted between the two requests: the same name again.
                    Look::Gone => continue,
                    // No `get` permission: the upload itself tells whether
                    // it is ours and Pending.
                    Look::Forbidden => {
                        tracing::info!(
                            coredump = name,
                            "exists and may not be read (no get on coredumps): uploading to it"
                        );
                        blind = true;
                        Next::Upload
                    }
                }
            }
            _ => return Err(unexpected("creating the Coredump", &created)),
        };
        match next {
            Next::Done(d) => return Ok(d),
            Next::Skip(why) => {
                skipped.push(why);
                attempt += 1;
                continue;
            }
            Next::Upload => {}
        }
        let put = client.upload(ns, &name, core, len).await?;
        match put.status.as_u16() {
            200 => {
                return Ok(Delivered::Stored {
                    name,
                    uploaded: true,
                })
            }
            // No longer Pending: a concurrent attempt finished, it expired,
            // or it was deleted. Look again.
            409 | 404 => match look(client, ns, &name, entry).await? {
                Look::Is(Next::Done(d)) => return Ok(d),
                Look::Is(Next::Skip(why)) => {
                    skipped.push(why);
                    attempt += 1;
                }
                // Still Pending: an earlier attempt's upload holds it.
                Look::Is(Next::Upload) => {
                    return Err(DeliverError::Busy(format!(
                        "{name}: upload refused while Pending: {}",
                        put.message()
                    )))
                }
                Look::Gone => {
                    skipped.push(format!("{name} was deleted during the upload"));
                    attempt += 1;
                }
                // Stored, Rejected or Failed cannot be told apart without
                // reading it: a new name risks a duplicate, never a loss.
                Look::Forbidden => {
                    skipped.push(format!("{name}: {}", put.message()));
                    attempt += 1;
                }
            },
            // A checksum or size mismatch on an object we could not read:
            // it holds another core, not a broken one of ours.
            422 if blind => {
                skipped.push(format!("{name} holds another core: {}", put.message()));
                attempt += 1;
            }
            _ => return Err(unexpected("uploading the core", &put)),
        }
    }
    Err(DeliverError::Invalid(format!(
        "no usable name after {attempt} tries: {}",
        skipped.join("; ")
    )))
}

/// What a GET of an existing name found.
enum Look {
    Is(Next),
    Gone,
    /// RBAC grants no `get` on coredumps.
    Forbidden,
}

async fn look<T: Transport>(
    client: &T,
    ns: &str,
    name: &str,
    entry: &SpoolEntry,
) -> Result<Look, DeliverError> {
    let got = client.get(ns, name).await?;
    match got.status.as_u16() {
        200 => Ok(Look::Is(judge(&parse_coredump(&got)?, entry, name))),
        404 => Ok(Look::Gone),
        403 => Ok(Look::Forbidden),
        _ => Err(unexpected("reading the existing Coredump", &got)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn answers_are_classified() {
        let r = |code: u16, body: &str| Reply {
            status: StatusCode::from_u16(code).unwrap(),
            body: Bytes::from(body.to_string()),
        };
        assert!(matches!(
            unexpected("x", &r(422, r#"{"message":"bad"}"#)),
            DeliverError::Invalid(m) if m.contains("bad")
        ));
        assert!(matches!(
            unexpected("x", &r(403, "")),
            DeliverError::Forbidden(_)
        ));
        for code in [401, 408, 429, 500, 503] {
            assert!(matches!(
                unexpected("x", &r(code, "")),
                DeliverError::Transient(_)
            ));
        }
        // Final answers, never a blind retry loop; a 409 race is retried
        // by the caller for that core, a bounded number of times.
        let class = |c: u16| classify(StatusCode::from_u16(c).unwrap());
        assert_eq!(class(403), Class::Forbidden);
        assert_eq!(class(409), Class::Busy);
        for code in [400, 404, 405, 410, 413, 415, 422] {
            assert_eq!(class(code), Class::Invalid, "{code}");
        }
        for code in [401, 408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(class(code), Class::Transient, "{code}");
        }
        assert_eq!(
            r(409, r#"{"kind":"Status","reason":"AlreadyExists"}"#)
                .status_reason()
                .as_deref(),
            Some("AlreadyExists")
        );
    }
}

/// [`deliver`] against a scripted [`Transport`]: which requests it makes, in
/// which order, and how each run of answers ends.
#[cfg(test)]
mod state_machine {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use coredump_openapi::types::CoredumpStatus;

    use super::*;
    use crate::deliver::fixtures::{attr, entry};

    const NODE: &str = "node-1";

    /// One request as the fake saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Create(String),
        Get(String),
        Upload(String, u64),
    }

    /// The fake's answer to the next request.
    #[derive(Debug, Clone)]
    enum Ans {
        /// 201 to a create, 200 to a get: the Coredump last created, in
        /// this phase.
        Object(CoredumpPhase),
        /// 200 to a get: a Coredump of another core under that name.
        Foreign,
        /// A metav1.Status with this code and reason (200 to an upload:
        /// stored).
        Status(u16, &'static str),
        /// No answer at all: the connection was refused or cut.
        Down,
    }

    struct Fake {
        script: Mutex<VecDeque<Ans>>,
        calls: Mutex<Vec<Call>>,
        /// What the last create sent, echoed by [`Ans::Object`].
        created: Mutex<Option<Coredump>>,
    }

    impl Fake {
        fn new(script: &[Ans]) -> Self {
            Self {
                script: Mutex::new(script.iter().cloned().collect()),
                calls: Mutex::new(Vec::new()),
                created: Mutex::new(None),
            }
        }

        fn answer(&self, call: Call) -> Result<Reply, DeliverError> {
            let ans = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| panic!("{call:?} after the script's end"));
            self.calls.lock().unwrap().push(call);
            let json = |status: u16, v: serde_json::Value| Reply {
                status: StatusCode::from_u16(status).unwrap(),
                body: Bytes::from(serde_json::to_vec(&v).unwrap()),
            };
            let object = |phase: CoredumpPhase, sha: Option<&str>| {
                let mut cd = self
                    .created
                    .lock()
                    .unwrap()
                    .clone()
                    .expect("nothing created");
                if let Some(sha) = sha {
                    cd.spec.sha256 = sha.to_string();
                }
                cd.status = Some(CoredumpStatus {
                    phase: Some(phase),
                    message: Some("quota of shop is full".into()),
                    ..Default::default()
                });
                serde_json::to_value(cd).unwrap()
            };
            match ans {
                Ans::Object(phase) => {
                    let code = if matches!(self.calls.lock().unwrap().last(), Some(Call::Create(_)))
                    {
                        201
                    } else {
                        200
                    };
                    Ok(json(code, object(phase, None)))
                }
                Ans::Foreign => Ok(json(
                    200,
                    object(CoredumpPhase::Stored, Some(&"aa".repeat(32))),
                )),
                Ans::Status(code, reason) => Ok(json(
                    code,
                    serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": format!("{reason} from the fake"), "reason": reason, "code": code,
                    }),
                )),
                Ans::Down => Err(DeliverError::Transient(
                    "connecting to 127.0.0.1:1: Connection refused".into(),
                )),
            }
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn left(&self) -> usize {
            self.script.lock().unwrap().len()
        }
    }

    impl Transport for Fake {
        fn create(
            &self,
            cd: &Coredump,
            _ns: &str,
        ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
            *self.created.lock().unwrap() = Some(cd.clone());
            let name = cd.metadata.name.clone().unwrap_or_default();
            std::future::ready(self.answer(Call::Create(name)))
        }

        fn get(
            &self,
            _ns: &str,
            name: &str,
        ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
            std::future::ready(self.answer(Call::Get(name.to_string())))
        }

        fn upload(
            &self,
            _ns: &str,
            name: &str,
            _core: &Path,
            len: u64,
        ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
            std::future::ready(self.answer(Call::Upload(name.to_string(), len)))
        }
    }

    /// The name `attempt` of the fixture's core.
    fn n(attempt: u32) -> String {
        let e = entry();
        coredump_name("web-0", NODE, &e.id, &e.sha256, attempt)
    }

    fn create(i: u32) -> Call {
        Call::Create(n(i))
    }
    fn get(i: u32) -> Call {
        Call::Get(n(i))
    }
    fn upload(i: u32) -> Call {
        Call::Upload(n(i), entry().stored_size)
    }

    /// One delivery of the fixture entry, its core a file of the size its
    /// metadata says; the whole script must be used.
    async fn run(fake: &Fake) -> Result<Delivered, DeliverError> {
        let dir = tempfile::tempdir().unwrap();
        let core = dir.path().join("core.zst");
        std::fs::write(&core, vec![0u8; entry().stored_size as usize]).unwrap();
        deliver(fake, &entry(), &core, &attr(), NODE, None).await
    }

    async fn script(answers: &[Ans]) -> (Result<Delivered, DeliverError>, Vec<Call>) {
        let fake = Fake::new(answers);
        let r = run(&fake).await;
        assert_eq!(
            fake.left(),
            0,
            "answers left unused: {r:?} {:?}",
            fake.calls()
        );
        (r, fake.calls())
    }

    const OK: Ans = Ans::Status(200, "");
    const EXISTS: Ans = Ans::Status(409, "AlreadyExists");
    const PENDING: Ans = Ans::Object(CoredumpPhase::Pending);

    fn stored(i: u32, uploaded: bool) -> Result<Delivered, DeliverError> {
        Ok(Delivered::Stored {
            name: n(i),
            uploaded,
        })
    }

    fn assert_delivered(r: Result<Delivered, DeliverError>, want: Result<Delivered, DeliverError>) {
        match (r, want) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (r, want) => panic!("{r:?}, expected {want:?}"),
        }
    }

    #[tokio::test]
    async fn a_new_core_is_created_then_uploaded() {
        let (r, calls) = script(&[PENDING, OK]).await;
        assert_delivered(r, stored(0, true));
        assert_eq!(calls, [create(0), upload(0)]);
    }

    /// The transient answers: no connection, a token being rotated, a
    /// slow or overloaded server, 5xx.
    const TRANSIENT: [Ans; 7] = [
        Ans::Down,
        Ans::Status(401, "Unauthorized"),
        Ans::Status(408, "Timeout"),
        Ans::Status(429, "TooManyRequests"),
        Ans::Status(500, "InternalError"),
        Ans::Status(502, ""),
        Ans::Status(503, "ServiceUnavailable"),
    ];

    #[tokio::test]
    async fn a_transient_failure_ends_the_attempt_at_once_wherever_it_comes() {
        for t in TRANSIENT {
            // At the create, at the read of an existing object, at the upload.
            for (answers, want) in [
                (vec![t.clone()], vec![create(0)]),
                (vec![EXISTS, t.clone()], vec![create(0), get(0)]),
                (vec![PENDING, t.clone()], vec![create(0), upload(0)]),
                // After the upload was refused, reading why.
                (
                    vec![PENDING, Ans::Status(409, "Conflict"), t.clone()],
                    vec![create(0), upload(0), get(0)],
                ),
            ] {
                let (r, calls) = script(&answers).await;
                assert!(
                    matches!(r, Err(DeliverError::Transient(_))),
                    "{t:?} {answers:?}: {r:?}"
                );
                assert_eq!(calls, want, "{t:?}");
            }
        }
        // The error says what failed, for the agent's log.
        let (r, _) = script(&[PENDING, Ans::Status(503, "ServiceUnavailable")]).await;
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("uploading the core") && msg.contains("503"),
            "{msg}"
        );
    }

    /// The agent's side of a transient failure: the core stays in the spool
    /// and, after its backoff, the next attempt picks up what the failed one
    /// left under the same name (here: the object it created before its
    /// upload's answer was lost), never a second Coredump.
    #[tokio::test]
    async fn after_transient_failures_the_next_attempt_resumes_under_the_same_name() {
        let fake = Fake::new(&[
            // 1: the server is down.
            Ans::Down,
            // 2: created, then the upload hits a 503.
            PENDING,
            Ans::Status(503, "ServiceUnavailable"),
            // 3: the object exists and is still Pending: upload again.
            EXISTS,
            PENDING,
            OK,
        ]);
        let mut attempts = 0;
        let fate = loop {
            attempts += 1;
            match run(&fake).await {
                Err(DeliverError::Transient(_)) if attempts < 10 => continue,
                other => break other,
            }
        };
        assert_delivered(fate, stored(0, true));
        assert_eq!(attempts, 3);
        assert_eq!(
            fake.calls(),
            [
                create(0),
                create(0),
                upload(0),
                create(0),
                get(0),
                upload(0)
            ]
        );
    }

    #[tokio::test]
    async fn refusals_and_invalid_requests_are_final() {
        for (answers, want, calls) in [
            // The node restriction or RBAC refuses the pod: at the create...
            (
                vec![Ans::Status(403, "Forbidden")],
                "Forbidden",
                vec![create(0)],
            ),
            // ...or at the upload.
            (
                vec![PENDING, Ans::Status(403, "Forbidden")],
                "Forbidden",
                vec![create(0), upload(0)],
            ),
            (
                vec![Ans::Status(422, "Invalid")],
                "Invalid",
                vec![create(0)],
            ),
            (
                vec![Ans::Status(400, "BadRequest")],
                "Invalid",
                vec![create(0)],
            ),
            // A checksum or size the server refuses for our own object.
            (
                vec![PENDING, Ans::Status(422, "Invalid")],
                "Invalid",
                vec![create(0), upload(0)],
            ),
            (
                vec![PENDING, Ans::Status(413, "RequestEntityTooLarge")],
                "Invalid",
                vec![create(0), upload(0)],
            ),
            // Reading an existing object is refused other than 403/404.
            (
                vec![EXISTS, Ans::Status(400, "BadRequest")],
                "Invalid",
                vec![create(0), get(0)],
            ),
        ] {
            let (r, seen) = script(&answers).await;
            let got = match &r {
                Err(DeliverError::Forbidden(_)) => "Forbidden",
                Err(DeliverError::Invalid(_)) => "Invalid",
                _ => "other",
            };
            assert_eq!(got, want, "{answers:?}: {r:?}");
            assert_eq!(seen, calls, "{answers:?}");
        }
    }

    #[tokio::test]
    async fn an_existing_object_is_read_and_carried_on_from_its_phase() {
        // Stored by an earlier attempt whose answer was lost: nothing to upload.
        let (r, calls) = script(&[EXISTS, Ans::Object(CoredumpPhase::Stored)]).await;
        assert_delivered(r, stored(0, false));
        assert_eq!(calls, [create(0), get(0)]);
        // Still Pending: upload to it.
        let (r, calls) = script(&[EXISTS, PENDING, OK]).await;
        assert_delivered(r, stored(0, true));
        assert_eq!(calls, [create(0), get(0), upload(0)]);
        // Rejected: the quota had no room; the record only.
        let (r, calls) = script(&[EXISTS, Ans::Object(CoredumpPhase::Rejected)]).await;
        assert_eq!(
            r.unwrap(),
            Delivered::Rejected {
                name: n(0),
                message: "quota of shop is full".into()
            }
        );
        assert_eq!(calls, [create(0), get(0)]);
        // Deleted between the create and the get: the same name again.
        let (r, calls) = script(&[EXISTS, Ans::Status(404, "NotFound"), PENDING, OK]).await;
        assert_delivered(r, stored(0, true));
        assert_eq!(calls, [create(0), get(0), create(0), upload(0)]);
    }

    #[tokio::test]
    async fn a_name_that_cannot_be_used_is_skipped_for_the_next() {
        // Failed (its upload expired while we were away), or another core's.
        for unusable in [Ans::Object(CoredumpPhase::Failed), Ans::Foreign] {
            let (r, calls) = script(&[EXISTS, unusable.clone(), PENDING, OK]).await;
            assert_delivered(r, stored(1, true));
            assert_eq!(
                calls,
                [create(0), get(0), create(1), upload(1)],
                "{unusable:?}"
            );
        }
        // Every name unusable: given up after MAX_NAMES, saying why.
        let mut answers = Vec::new();
        let mut want = Vec::new();
        for i in 0..MAX_NAMES {
            answers.extend([EXISTS, Ans::Object(CoredumpPhase::Failed)]);
            want.extend([create(i), get(i)]);
        }
        let (r, calls) = script(&answers).await;
        let Err(DeliverError::Invalid(msg)) = r else {
            panic!("{r:?}");
        };
        assert!(msg.contains(&format!("after {MAX_NAMES} tries")), "{msg}");
        assert!(msg.contains(&n(0)), "{msg}");
        assert_eq!(calls, want);
    }

    #[tokio::test]
    async fn objects_that_keep_vanishing_end_the_attempt() {
        let mut answers = Vec::new();
        let mut want = Vec::new();
        for _ in 0..3 * MAX_NAMES {
            answers.extend([EXISTS, Ans::Status(404, "NotFound")]);
            want.extend([create(0), get(0)]);
        }
        let (r, calls) = script(&answers).await;
        assert!(matches!(r, Err(DeliverError::Invalid(_))), "{r:?}");
        assert_eq!(calls, want);
    }

    #[tokio::test]
    async fn a_409_on_the_upload_is_looked_into() {
        // An earlier attempt's upload is still in progress (the object is
        // Pending): Busy, for the caller to retry this core alone.
        let (r, calls) = script(&[PENDING, Ans::Status(409, "Conflict"), PENDING]).await;
        let Err(DeliverError::Busy(msg)) = r else {
            panic!("{r:?}");
        };
        assert!(msg.contains("upload refused while Pending"), "{msg}");
        assert_eq!(calls, [create(0), upload(0), get(0)]);
        // A concurrent attempt finished it.
        let (r, calls) = script(&[
            PENDING,
            Ans::Status(409, "Conflict"),
            Ans::Object(CoredumpPhase::Stored),
        ])
        .await;
        assert_delivered(r, stored(0, false));
        assert_eq!(calls, [create(0), upload(0), get(0)]);
        // It expired (Failed) or was deleted meanwhile: the next name.
        for gone in [
            Ans::Object(CoredumpPhase::Failed),
            Ans::Status(404, "NotFound"),
        ] {
            let (r, calls) = script(&[
                PENDING,
                Ans::Status(409, "Conflict"),
                gone.clone(),
                PENDING,
                OK,
            ])
            .await;
            assert_delivered(r, stored(1, true));
            assert_eq!(
                calls,
                [create(0), upload(0), get(0), create(1), upload(1)],
                "{gone:?}"
            );
        }
        // A create that races another (409, not AlreadyExists): Busy at once.
        let (r, calls) = script(&[Ans::Status(409, "Conflict")]).await;
        assert!(matches!(r, Err(DeliverError::Busy(_))), "{r:?}");
        assert_eq!(calls, [create(0)]);
    }

    #[tokio::test]
    async fn without_get_permission_the_upload_tells() {
        let forbidden = Ans::Status(403, "Forbidden");
        // Ours and Pending: the upload goes through.
        let (r, calls) = script(&[EXISTS, forbidden.clone(), OK]).await;
        assert_delivered(r, stored(0, true));
        assert_eq!(calls, [create(0), get(0), upload(0)]);
        // A checksum mismatch on an object we could not read: another core's,
        // so the next name (not Invalid, as it would be for our own object).
        let (r, calls) = script(&[
            EXISTS,
            forbidden.clone(),
            Ans::Status(422, "Invalid"),
            PENDING,
            OK,
        ])
        .await;
        assert_delivered(r, stored(1, true));
        assert_eq!(calls, [create(0), get(0), upload(0), create(1), upload(1)]);
        // Not Pending any more, and it cannot be read: a new name risks a
        // duplicate, never a loss.
        let (r, calls) = script(&[
            EXISTS,
            forbidden.clone(),
            Ans::Status(409, "Conflict"),
            forbidden,
            PENDING,
            OK,
        ])
        .await;
        assert_delivered(r, stored(1, true));
        assert_eq!(
            calls,
            [create(0), get(0), upload(0), get(0), create(1), upload(1)]
        );
    }

    #[tokio::test]
    async fn a_core_that_disagrees_with_its_metadata_is_never_sent() {
        let fake = Fake::new(&[]);
        let dir = tempfile::tempdir().unwrap();
        let core = dir.path().join("core.zst");
        std::fs::write(&core, b"short").unwrap();
        let r = deliver(&fake, &entry(), &core, &attr(), NODE, None).await;
        assert!(matches!(r, Err(DeliverError::Local(_))), "{r:?}");
        let r = deliver(
            &fake,
            &entry(),
            &dir.path().join("gone"),
            &attr(),
            NODE,
            None,
        )
        .await;
        assert!(matches!(r, Err(DeliverError::Local(_))), "{r:?}");
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn the_analysis_goes_with_the_object() {
        let fake = Fake::new(&[PENDING, OK]);
        let dir = tempfile::tempdir().unwrap();
        let core = dir.path().join("core.zst");
        std::fs::write(&core, vec![0u8; entry().stored_size as usize]).unwrap();
        let analysis = coredump_openapi::types::CrashAnalysis::default();
        deliver(&fake, &entry(), &core, &attr(), NODE, Some(&analysis))
            .await
            .unwrap();
        let sent = fake.created.lock().unwrap().clone().unwrap();
        assert_eq!(sent.spec.analysis, Some(analysis));
        assert_eq!(sent.metadata.namespace.as_deref(), Some("shop"));
    }
}
