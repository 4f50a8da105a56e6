//! Crash insight: what the node agent read from a core before uploading it (why the process
//! crashed, where, and which other crashes are the same bug), and the `CrashGroup` kind that
//! counts the crashes of one bug in a namespace.
//!
//! Invariants: a [`CrashAnalysis`] is part of the Coredump's immutable spec, computed on the
//! node whether or not the core is later accepted, and bounded ([`MAX_ANALYSIS_BYTES`] as
//! JSON, [`MAX_FRAMES`] frames, [`MAX_THREADS`] threads, [`MAX_MODULES`] modules). A
//! fingerprint is versioned (`v1:` + 64 hex digits) and holds no addresses, build-ids, pod
//! names or image tags, so one bug keeps one fingerprint across builds and pods.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

use super::validation::FieldError;
use super::{serialize_object, KindInfo, SubresourceInfo, CATEGORIES};

/// Largest `spec.analysis` accepted, as JSON.
pub const MAX_ANALYSIS_BYTES: usize = 64 * 1024;
/// Frames kept of the crashing thread.
pub const MAX_FRAMES: usize = 64;
/// Threads summarized (the crashing one included).
pub const MAX_THREADS: usize = 64;
/// Mapped modules listed.
pub const MAX_MODULES: usize = 256;
/// Longest log tail kept.
pub const MAX_LOG_TAIL: usize = 4096;
/// Longest cause message (panic or assertion text) kept.
pub const MAX_CAUSE_MESSAGE: usize = 1024;
/// Occurrences a CrashGroup remembers.
pub const MAX_RECENT: usize = 5;
/// The fingerprint scheme this version writes.
pub const FINGERPRINT_PREFIX: &str = "v1:";

/// How far the analysis got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
// Variants are named, not documented: see the note inside.
#[allow(missing_docs)]
pub enum AnalysisState {
    // No doc comments on the variants: schemars would describe a oneOf of constants.
    Complete,
    Partial,
    Failed,
}

/// The probable cause, where the signal, fault address and frames tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
// Variants are named, not documented: see the note inside.
#[allow(missing_docs)]
pub enum CrashCause {
    NullPointerDereference,
    StackOverflow,
    InvalidMemoryAccess,
    Abort,
    AssertionFailure,
    StackSmashing,
    CxxUncaughtException,
    GoPanic,
    GoFatalError,
    RustPanic,
    IllegalInstruction,
    ArithmeticError,
    BusError,
    Trap,
    Killed,
    Unknown,
}

impl CrashCause {
    /// The cause as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NullPointerDereference => "NullPointerDereference",
            Self::StackOverflow => "StackOverflow",
            Self::InvalidMemoryAccess => "InvalidMemoryAccess",
            Self::Abort => "Abort",
            Self::AssertionFailure => "AssertionFailure",
            Self::StackSmashing => "StackSmashing",
            Self::CxxUncaughtException => "CxxUncaughtException",
            Self::GoPanic => "GoPanic",
            Self::GoFatalError => "GoFatalError",
            Self::RustPanic => "RustPanic",
            Self::IllegalInstruction => "IllegalInstruction",
            Self::ArithmeticError => "ArithmeticError",
            Self::BusError => "BusError",
            Self::Trap => "Trap",
            Self::Killed => "Killed",
            Self::Unknown => "Unknown",
        }
    }
}

/// The signal as the kernel described it in the core (`NT_SIGINFO`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CrashSignal")]
pub struct CrashSignal {
    /// Signal number, e.g. 11.
    #[serde(default)]
    pub number: i32,
    /// Signal name, e.g. SIGSEGV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// si_code, e.g. 1 (SEGV_MAPERR); negative values were sent by a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Name of si_code, e.g. SEGV_MAPERR, SI_TKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    /// Faulting address for SIGSEGV, SIGBUS, SIGILL and SIGFPE, in hexadecimal (0x…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_address: Option<String>,
}

/// One frame of a stack trace, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.StackFrame")]
pub struct StackFrame {
    /// Path of the mapped file the instruction is in, as the process saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// GNU build-id of that file, hexadecimal.
    #[serde(default, rename = "buildID", skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Offset of the instruction in the file (for symbolizing with the same binary), 0x….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// Function name, demangled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Source file, where debug information is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Source line, where debug information is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// How the frame was found: context (registers), cfi, framePointer or scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// False for frames in system libraries and runtimes; the signature and the fingerprint
    /// prefer in-app frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app: Option<bool>,
}

/// The crashing thread with its frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.ThreadTrace")]
pub struct ThreadTrace {
    /// Thread ID in the node's PID namespace.
    #[serde(default)]
    pub tid: i64,
    /// Thread name (comm), as the process set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Frames, innermost first, at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<StackFrame>,
}

/// One line about another thread: where it was when the process died.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.ThreadSummary")]
pub struct ThreadSummary {
    /// Thread ID in the node's PID namespace.
    #[serde(default)]
    pub tid: i64,
    /// Thread name (comm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its innermost frame, as function (module+offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_frame: Option<String>,
}

/// A file mapped into the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.MappedModule")]
pub struct MappedModule {
    /// Path as the process saw it.
    #[serde(default)]
    pub path: String,
    /// GNU build-id, hexadecimal: find the exact binary and its debug information by it.
    #[serde(default, rename = "buildID", skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Address it was loaded at, 0x….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Why the process crashed and where, read from the core and the mapped binaries on the
/// node before upload (so also for cores the quota rejects).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CrashAnalysis")]
pub struct CrashAnalysis {
    /// Complete, Partial (some of it could not be read, see error) or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AnalysisState>,
    /// Why the analysis is partial or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The signal, its code and the faulting address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<CrashSignal>,
    /// The probable cause, e.g. NullPointerDereference, StackOverflow, Abort, GoPanic,
    /// RustPanic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<CrashCause>,
    /// The panic, fatal error or assertion message, where one was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_message: Option<String>,
    /// Short crash signature: the top in-app function, e.g. parse_header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Versioned hash of the crash's normalized top frames, signal class and executable
    /// name (v1:…): crashes of the same bug share it. Names the CrashGroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The crashing thread and its frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashing_thread: Option<ThreadTrace>,
    /// Every thread's innermost frame, at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadSummary>,
    /// The mapped files with their build-ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<MappedModule>,
    /// The last lines the container wrote before it crashed (at most 4 KiB), where the
    /// node keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Checks the bounds and shapes of `spec.analysis`.
pub fn validate_analysis(a: &CrashAnalysis, errors: &mut Vec<FieldError>) {
    let f = |field: &str| format!("spec.analysis.{field}");
    let size = serde_json::to_vec(a).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_ANALYSIS_BYTES {
        errors.push(FieldError::too_long("spec.analysis", MAX_ANALYSIS_BYTES));
    }
    if let Some(fp) = &a.fingerprint {
        if !is_fingerprint(fp) {
            errors.push(FieldError::invalid(
                f("fingerprint"),
                fp,
                "must be v1: followed by 64 lowercase hexadecimal digits",
            ));
        }
    }
    if let Some(t) = &a.crashing_thread {
        if t.frames.len() > MAX_FRAMES {
            errors.push(FieldError::too_long(f("crashingThread.frames"), MAX_FRAMES));
        }
    }
    if a.threads.len() > MAX_THREADS {
        errors.push(FieldError::too_long(f("threads"), MAX_THREADS));
    }
    if a.modules.len() > MAX_MODULES {
        errors.push(FieldError::too_long(f("modules"), MAX_MODULES));
    }
    if a.log_tail.as_ref().is_some_and(|l| l.len() > MAX_LOG_TAIL) {
        errors.push(FieldError::too_long(f("logTail"), MAX_LOG_TAIL));
    }
    if a.cause_message
        .as_ref()
        .is_some_and(|m| m.len() > MAX_CAUSE_MESSAGE)
    {
        errors.push(FieldError::too_long(f("causeMessage"), MAX_CAUSE_MESSAGE));
    }
    if a.signature.as_ref().is_some_and(|s| s.len() > 256) {
        errors.push(FieldError::too_long(f("signature"), 256));
    }
}

/// `v1:` and 64 lowercase hex digits.
pub fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix(FINGERPRINT_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The CrashGroup a fingerprint names in every namespace: readable (executable and
/// signature, lower-cased to a DNS label's alphabet) and unique by a part of the hash.
/// Depends on its inputs alone, so every crash of a group finds the same object.
pub fn crash_group_name(
    fingerprint: &str,
    executable: Option<&str>,
    signature: Option<&str>,
) -> String {
    let hash: String = fingerprint
        .strip_prefix(FINGERPRINT_PREFIX)
        .unwrap_or(fingerprint)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let label = |s: &str, max: usize| -> String {
        let mut out = String::new();
        for c in s.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
            if out.len() >= max {
                break;
            }
        }
        out.trim_matches('-').to_string()
    };
    let exe = executable
        .map(|e| e.rsplit('/').next().unwrap_or(e))
        .map(|e| label(e, 40))
        .unwrap_or_default();
    let sig = signature.map(|s| label(s, 60)).unwrap_or_default();
    let parts: Vec<&str> = [exe.as_str(), sig.as_str(), hash.as_str()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        "unknown".to_string()
    } else {
        parts.join("-")
    }
}

/// The `CrashGroup` kind: read-only to users, kept by the server.
pub const CRASH_GROUP: KindInfo = KindInfo {
    kind: "CrashGroup",
    list_kind: "CrashGroupList",
    plural: "crashgroups",
    singular: "crashgroup",
    short_names: &["crashgrp"],
    categories: CATEGORIES,
    namespaced: true,
    // Kept by the server in the transaction of each Coredump create; delete and
    // deletecollection let a namespace's deletion (and an admin) remove them.
    verbs: &["delete", "deletecollection", "get", "list", "watch"],
    subresources: &[] as &[SubresourceInfo],
};

/// The crashes of one bug in a namespace: every Coredump whose analysis has this
/// fingerprint, counted by the server as it is created (Rejected ones too), kept after
/// its cores are deleted, until the namespace goes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    rename = "io.coredump.v1alpha1.CrashGroup",
    transform = crash_group_schema_transform
)]
pub struct CrashGroup {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,

    /// What the crashes have in common.
    #[serde(default)]
    pub spec: CrashGroupSpec,

    /// How often and where it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CrashGroupStatus>,
}

/// What the crashes of a group have in common, from the first one's analysis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CrashGroupSpec")]
pub struct CrashGroupSpec {
    /// The fingerprint (v1:…) every crash of the group has.
    #[serde(default)]
    pub fingerprint: String,
    /// The crash signature, e.g. parse_header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The probable cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<CrashCause>,
    /// The executable's path inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The signal, e.g. SIGSEGV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
}

/// One crash of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CrashOccurrence")]
pub struct CrashOccurrence {
    /// The Coredump's name.
    #[serde(default)]
    pub coredump: String,
    /// The pod that crashed.
    #[serde(default)]
    pub pod_name: String,
    /// Its container.
    #[serde(default)]
    pub container_name: String,
    /// The container's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The node.
    #[serde(default)]
    pub node_name: String,
    /// When the kernel produced its core.
    pub dump_time: Time,
}

/// How often, when and where a group's crashes happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CrashGroupStatus")]
pub struct CrashGroupStatus {
    /// Crashes counted.
    #[serde(default)]
    pub count: i64,
    /// The earliest dump time of its crashes.
    pub first_seen: Time,
    /// The latest dump time of its crashes.
    pub last_seen: Time,
    /// The latest Coredump's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    /// The last few crashes, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<CrashOccurrence>,
}

impl Serialize for CrashGroup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_object(
            serializer,
            &CRASH_GROUP,
            &self.metadata,
            &self.spec,
            self.status.as_ref(),
        )
    }
}

impl k8s_openapi::Resource for CrashGroup {
    const API_VERSION: &'static str = crate::API_VERSION;
    const GROUP: &'static str = crate::GROUP;
    const KIND: &'static str = CRASH_GROUP.kind;
    const VERSION: &'static str = crate::VERSION;
    const URL_PATH_SEGMENT: &'static str = CRASH_GROUP.plural;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for CrashGroup {
    const LIST_KIND: &'static str = CRASH_GROUP.list_kind;
}

impl k8s_openapi::Metadata for CrashGroup {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn crash_group_schema_transform(schema: &mut schemars::Schema) {
    super::add_type_meta(schema, CRASH_GROUP.kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_stable_dns_names() {
        let fp = format!("v1:{}", "ab12".repeat(16));
        let n = crash_group_name(&fp, Some("/usr/bin/My_Server"), Some("ns::parse_header<T>"));
        assert_eq!(n, "my-server-ns-parse-header-t-ab12ab12ab12");
        assert!(crate::types::validate_name(&n).is_ok());
        assert_eq!(crash_group_name(&fp, None, None), "ab12ab12ab12");
        assert_eq!(crash_group_name("", Some("///"), Some("__")), "unknown");
        let long = crash_group_name(&fp, Some(&"x".repeat(500)), Some(&"y".repeat(500)));
        assert!(crate::types::validate_name(&long).is_ok(), "{long}");
    }

    #[test]
    fn fingerprints_are_versioned_hex() {
        assert!(is_fingerprint(&format!("v1:{}", "0f".repeat(32))));
        assert!(!is_fingerprint(&format!("v1:{}", "0F".repeat(32))));
        assert!(!is_fingerprint(&format!("v2:{}", "0f".repeat(32))));
        assert!(!is_fingerprint("v1:abc"));
    }

    #[test]
    fn analysis_bounds() {
        let mut a = CrashAnalysis {
            fingerprint: Some("nope".into()),
            log_tail: Some("x".repeat(MAX_LOG_TAIL + 1)),
            threads: vec![ThreadSummary::default(); MAX_THREADS + 1],
            ..Default::default()
        };
        let mut errors = Vec::new();
        validate_analysis(&a, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.analysis.fingerprint",
                "spec.analysis.threads",
                "spec.analysis.logTail"
            ]
        );
        a = CrashAnalysis {
            modules: vec![
                MappedModule {
                    path: "m".repeat(1000),
                    ..Default::default()
                };
                100
            ],
            ..Default::default()
        };
        errors.clear();
        validate_analysis(&a, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.analysis");
    }
}
