//! Validation of `Coredump` and `CoredumpQuota` objects, reported the way Kubernetes reports
//! field errors (the `causes` of a 422 Invalid `Status`).

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    parse_bytes, parse_duration, Coredump, CoredumpQuota, CoredumpStatus, QuantityError,
    MAX_COMMAND_LINE, QUOTA_COUNT, QUOTA_STORAGE,
};

/// Longest `spec.executable` accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_EXECUTABLE: usize = 4096;
/// Longest `status.reason` accepted, in bytes (as for condition reasons).
pub const MAX_REASON: usize = 1024;
/// Longest `status.message` accepted, in bytes (as for condition messages).
pub const MAX_MESSAGE: usize = 32768;
/// Longest `spec.image` accepted, in bytes.
const MAX_IMAGE: usize = 4096;
/// Longest `spec.podUID` / `spec.containerID` accepted, in bytes.
const MAX_ID: usize = 256;
/// Longest `spec.signalName` accepted, in bytes.
const MAX_SIGNAL_NAME: usize = 32;

/// One invalid field, as a `StatusCause` of a 422 Invalid response: `reason` is the cause type,
/// `field` the path (`spec.sha256`, `spec.hard[storage]`), `message` what is wrong, worded as
/// Kubernetes does (`Required value`, `Invalid value: "x": …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.sha256`.
    pub field: String,
    /// The metav1 `CauseType`, one of the associated constants (e.g. [`FieldError::INVALID`]).
    pub reason: &'static str,
    /// What is wrong, e.g. `Invalid value: "abc": must be 64 lowercase hexadecimal digits`.
    pub message: String,
}

impl FieldError {
    /// Cause type: a required field is missing or empty.
    pub const REQUIRED: &'static str = "FieldValueRequired";
    /// Cause type: the value is malformed or out of range.
    pub const INVALID: &'static str = "FieldValueInvalid";
    /// Cause type: the value is not one of a fixed set.
    pub const NOT_SUPPORTED: &'static str = "FieldValueNotSupported";
    /// Cause type: the value is longer than allowed.
    pub const TOO_LONG: &'static str = "FieldValueTooLong";
    /// Cause type: the field may not be set or changed.
    pub const FORBIDDEN: &'static str = "FieldValueForbidden";
    /// Cause type: the value duplicates another.
    pub const DUPLICATE: &'static str = "FieldValueDuplicate";

    /// A required field is missing; `detail` may be empty.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::with_detail(field, Self::REQUIRED, "Required value".to_owned(), detail)
    }

    /// A string field has a bad value.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self::with_detail(
            field,
            Self::INVALID,
            format!("Invalid value: {value:?}"),
            detail,
        )
    }

    /// A number field has a bad value.
    pub fn invalid_number(field: impl Into<String>, value: i64, detail: &str) -> Self {
        Self::with_detail(
            field,
            Self::INVALID,
            format!("Invalid value: {value}"),
            detail,
        )
    }

    /// A field was changed that may not change.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self::with_detail(
            field,
            Self::INVALID,
            "Invalid value".to_owned(),
            "field is immutable",
        )
    }

    /// A value is not one of `supported`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self::with_detail(
            field,
            Self::NOT_SUPPORTED,
            format!("Unsupported value: {value:?}"),
            &format!("supported values: {}", supported.join(", ")),
        )
    }

    /// A value is longer than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::with_detail(
            field,
            Self::TOO_LONG,
            "Too long".to_owned(),
            &format!("may not be more than {max} bytes"),
        )
    }

    fn with_detail(
        field: impl Into<String>,
        reason: &'static str,
        mut message: String,
        detail: &str,
    ) -> Self {
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        FieldError {
            field: field.into(),
            reason,
            message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower \
     case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
     character (e.g. 'example.com')";
const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case \
     alphanumeric characters or '-', and must start and end with an alphanumeric character \
     (e.g. 'my-name' or '123-abc')";

/// Whether `label` is a non-empty run of `[a-z0-9-]` that starts and ends alphanumeric.
fn is_dns1123_label_syntax(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Checks an object name: a DNS-1123 subdomain, at most 253 characters of lowercase letters,
/// digits, '-' and '.', each dot-separated part starting and ending with a letter or digit.
/// The error is the explanation Kubernetes gives.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("must be no more than 253 characters".to_owned());
    }
    if name.split('.').all(is_dns1123_label_syntax) {
        Ok(())
    } else {
        Err(DNS1123_SUBDOMAIN_MESSAGE.to_owned())
    }
}

/// Checks a namespace name: a DNS-1123 label, as Kubernetes requires.
pub fn validate_namespace_name(name: &str) -> Result<(), String> {
    validate_label(name)
}

/// Checks a DNS-1123 label (container names): at most 63 characters, no dots.
fn validate_label(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err("must be no more than 63 characters".to_owned());
    }
    if is_dns1123_label_syntax(name) {
        Ok(())
    } else {
        Err(DNS1123_LABEL_MESSAGE.to_owned())
    }
}

/// `metadata.name` (or, before the server has generated a name, `metadata.generateName`).
fn validate_metadata(meta: &ObjectMeta, errors: &mut Vec<FieldError>) {
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => {
            if let Err(detail) = validate_name(name) {
                errors.push(FieldError::invalid("metadata.name", name, &detail));
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            // The server appends five lowercase alphanumerics; check the prefix as if it had.
            if let Err(detail) = validate_name(&format!("{prefix}x")) {
                errors.push(FieldError::invalid(
                    "metadata.generateName",
                    prefix,
                    &detail,
                ));
            }
        }
        _ => errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
    }
    if let Some(labels) = &meta.labels {
        for (k, v) in labels {
            if let Err(detail) = validate_qualified_name(k) {
                errors.push(FieldError::invalid("metadata.labels", k, &detail));
            }
            if let Err(detail) = validate_label_value(v) {
                errors.push(FieldError::invalid(
                    format!("metadata.labels[{k}]"),
                    v,
                    &detail,
                ));
            }
        }
    }
    if let Some(annotations) = &meta.annotations {
        let mut total = 0usize;
        for (k, v) in annotations {
            if let Err(detail) = validate_qualified_name(&k.to_ascii_lowercase()) {
                errors.push(FieldError::invalid("metadata.annotations", k, &detail));
            }
            total = total.saturating_add(k.len()).saturating_add(v.len());
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errors.push(FieldError::too_long(
                "metadata.annotations",
                MAX_ANNOTATIONS_BYTES,
            ));
        }
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if let Err(detail) = validate_finalizer(f) {
            errors.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                &detail,
            ));
        }
    }
}

/// apimachinery's `TotalAnnotationSizeLimitB`: keys and values of all annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Finalizer names without a domain that Kubernetes itself defines.
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

const QUALIFIED_NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', \
     '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or \
     'my.name', or '123-abc')";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`: the name part of a qualified name and a
/// non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first)
                && alnum(last)
                && b.iter()
                    .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// apimachinery's `IsQualifiedName`: `[prefix/]name`, prefix a DNS-1123 subdomain, name at
/// most 63 characters. Label keys, annotation keys and finalizers are qualified names.
pub fn validate_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".to_owned());
        }
        validate_name(p).map_err(|d| format!("prefix part {d}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".to_owned());
    }
    if !is_qualified_name_part(name) {
        return Err(QUALIFIED_NAME_MESSAGE.to_owned());
    }
    Ok(())
}

/// apimachinery's `IsValidLabelValue`: empty, or at most 63 characters of a qualified
/// name's name part.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 {
        return Err("must be no more than 63 characters".to_owned());
    }
    if !is_qualified_name_part(v) {
        return Err(
            "a valid label must be an empty string or consist of alphanumeric \
             characters, '-', '_' or '.', and must start and end with an alphanumeric \
             character (e.g. 'MyValue', or 'my_value', or '12345')"
                .to_owned(),
        );
    }
    Ok(())
}

/// apimachinery's `ValidateFinalizerName`: a qualified name, domain-qualified unless it is
/// one of Kubernetes' own.
fn validate_finalizer(f: &str) -> Result<(), String> {
    validate_qualified_name(f)?;
    if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
        return Err(
            "name is neither a standard finalizer name nor is it fully qualified".to_owned(),
        );
    }
    Ok(())
}

fn require(field: &str, value: &str, errors: &mut Vec<FieldError>) -> bool {
    if value.is_empty() {
        errors.push(FieldError::required(field, ""));
        false
    } else {
        true
    }
}

fn max_len(field: &str, value: Option<&str>, max: usize, errors: &mut Vec<FieldError>) {
    if value.is_some_and(|v| v.len() > max) {
        errors.push(FieldError::too_long(field, max));
    }
}

/// Largest core size accepted (`spec.size`, `spec.storedSize`): 1 PiB, far above any
/// machine's memory, and small enough that the sizes of 8192 cores still add up without
/// overflow (quota sums saturate as well).
pub const MAX_CORE_BYTES: u64 = 1 << 50;

/// A required quantity of bytes, at most [`MAX_CORE_BYTES`].
fn validate_bytes(field: &str, quantity: &Quantity, errors: &mut Vec<FieldError>) {
    if require(field, &quantity.0, errors) {
        match parse_bytes(&quantity.0) {
            Err(e) => errors.push(FieldError::invalid(
                field,
                &quantity.0,
                &quantity_detail(&e),
            )),
            Ok(n) if n > MAX_CORE_BYTES => errors.push(FieldError::invalid(
                field,
                &quantity.0,
                "must be no more than 1Pi",
            )),
            Ok(_) => {}
        }
    }
}

/// The detail of a field error for a quantity that is not a byte count.
fn quantity_detail(e: &QuantityError) -> String {
    match e {
        QuantityError::Empty => "must not be empty".to_owned(),
        QuantityError::Syntax(_) => {
            "must be a quantity such as 1048576, 1Mi, 500k or 1G".to_owned()
        }
        QuantityError::Negative(_) => "must not be negative".to_owned(),
        QuantityError::Fraction(_) => "must be a whole number".to_owned(),
        QuantityError::TooLarge(_) => "must be no more than 2^63-1".to_owned(),
    }
}

/// Whether `s` is a SHA-256 checksum as this API writes it: 64 lowercase hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` reads as a signal name: `SIG` then uppercase letters, digits, '+' or '-'
/// (`SIGSEGV`, `SIGRTMIN+3`).
fn is_signal_name(s: &str) -> bool {
    s.strip_prefix("SIG").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
    })
}

/// Whether `s` is a CamelCase machine-readable reason, as condition reasons are.
fn is_reason(s: &str) -> bool {
    let bytes = s.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':');
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphabetic()
                && (last.is_ascii_alphanumeric() || *last == b'_')
                && bytes.iter().all(inner)
        }
        _ => false,
    }
}

/// Validates a `Coredump` as submitted (create, update, status update). Call it after the server
/// has filled in a generated name; before, `metadata.generateName` is checked instead.
///
/// `spec.dumpTime` needs no check here: a missing or malformed time already fails to
/// deserialize.
pub fn validate_coredump(coredump: &Coredump) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_metadata(&coredump.metadata, &mut errors);
    let spec = &coredump.spec;

    for (field, value) in [
        ("spec.nodeName", &spec.node_name),
        ("spec.podName", &spec.pod_name),
    ] {
        if require(field, value, &mut errors) {
            if let Err(detail) = validate_name(value) {
                errors.push(FieldError::invalid(field, value, &detail));
            }
        }
    }
    if require("spec.podUID", &spec.pod_uid, &mut errors) {
        max_len("spec.podUID", Some(&spec.pod_uid), MAX_ID, &mut errors);
    }
    if require("spec.containerName", &spec.container_name, &mut errors) {
        if let Err(detail) = validate_label(&spec.container_name) {
            errors.push(FieldError::invalid(
                "spec.containerName",
                &spec.container_name,
                &detail,
            ));
        }
    }
    max_len(
        "spec.containerID",
        spec.container_id.as_deref(),
        MAX_ID,
        &mut errors,
    );
    max_len("spec.image", spec.image.as_deref(), MAX_IMAGE, &mut errors);

    for (field, pid) in [("spec.pid", spec.pid), ("spec.hostPID", spec.host_pid)] {
        if let Some(pid) = pid.filter(|p| *p < 1) {
            errors.push(FieldError::invalid_number(
                field,
                pid,
                "must be greater than 0",
            ));
        }
    }

    match spec.signal {
        0 => errors.push(FieldError::required("spec.signal", "")),
        1..=64 => {}
        other => errors.push(FieldError::invalid_number(
            "spec.signal",
            i64::from(other),
            "must be between 1 and 64, inclusive",
        )),
    }
    if let Some(name) = &spec.signal_name {
        if name.len() > MAX_SIGNAL_NAME {
            errors.push(FieldError::too_long("spec.signalName", MAX_SIGNAL_NAME));
        } else if !is_signal_name(name) {
            errors.push(FieldError::invalid(
                "spec.signalName",
                name,
                "must be a signal name such as SIGSEGV",
            ));
        }
    }

    max_len(
        "spec.executable",
        spec.executable.as_deref(),
        MAX_EXECUTABLE,
        &mut errors,
    );
    max_len(
        "spec.commandLine",
        spec.command_line.as_deref(),
        MAX_COMMAND_LINE,
        &mut errors,
    );

    for (field, id) in [("spec.uid", spec.uid), ("spec.gid", spec.gid)] {
        if let Some(id) = id.filter(|id| u32::try_from(*id).is_err()) {
            errors.push(FieldError::invalid_number(
                field,
                id,
                "must be between 0 and 4294967295, inclusive",
            ));
        }
    }

    validate_bytes("spec.size", &spec.size, &mut errors);
    validate_bytes("spec.storedSize", &spec.stored_size, &mut errors);
    if let Some(analysis) = &spec.analysis {
        super::analysis::validate_analysis(analysis, &mut errors);
    }

    if require("spec.sha256", &spec.sha256, &mut errors) && !is_sha256_hex(&spec.sha256) {
        errors.push(FieldError::invalid(
            "spec.sha256",
            &spec.sha256,
            "must be 64 lowercase hexadecimal digits (a SHA-256 checksum)",
        ));
    }

    if let Some(status) = &coredump.status {
        validate_coredump_status(status, &mut errors);
    }
    errors
}

fn validate_coredump_status(status: &CoredumpStatus, errors: &mut Vec<FieldError>) {
    if let Some(reason) = &status.reason {
        if reason.len() > MAX_REASON {
            errors.push(FieldError::too_long("status.reason", MAX_REASON));
        } else if !is_reason(reason) {
            errors.push(FieldError::invalid(
                "status.reason",
                reason,
                "must be a CamelCase word such as QuotaExceeded",
            ));
        }
    }
    max_len(
        "status.message",
        status.message.as_deref(),
        MAX_MESSAGE,
        errors,
    );
}

/// Validates an update of a `Coredump`: the new object must be valid and its spec unchanged.
pub fn validate_coredump_update(old: &Coredump, new: &Coredump) -> Vec<FieldError> {
    let mut errors = validate_coredump(new);
    if old.spec != new.spec {
        errors.push(FieldError::immutable("spec"));
    }
    errors
}

/// Checks a map of quota resources (`spec.hard`, `status.hard`, `status.used`).
fn validate_quota_map(
    field: &str,
    map: &std::collections::BTreeMap<String, Quantity>,
    errors: &mut Vec<FieldError>,
) {
    for (key, quantity) in map {
        let field = format!("{field}[{key}]");
        if key != QUOTA_STORAGE && key != QUOTA_COUNT {
            errors.push(FieldError::not_supported(
                field,
                key,
                &[QUOTA_COUNT, QUOTA_STORAGE],
            ));
            continue;
        }
        if let Err(e) = parse_bytes(&quantity.0) {
            let detail = match e {
                QuantityError::Negative(_) => "must be greater than or equal to 0".to_owned(),
                other => quantity_detail(&other),
            };
            errors.push(FieldError::invalid(field, &quantity.0, &detail));
        }
    }
}

/// Validates a `CoredumpQuota`: the name, `hard` keys (only `storage` and `count`) with
/// non-negative whole quantities, and `maxAge` as a positive Go duration.
pub fn validate_coredump_quota(quota: &CoredumpQuota) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_metadata(&quota.metadata, &mut errors);
    validate_quota_map("spec.hard", &quota.spec.hard, &mut errors);
    if let Some(max_age) = &quota.spec.max_age {
        match parse_duration(max_age) {
            Ok(d) if d.is_zero() => errors.push(FieldError::invalid(
                "spec.maxAge",
                max_age,
                "must be greater than zero",
            )),
            Ok(_) => {}
            Err(_) => errors.push(FieldError::invalid(
                "spec.maxAge",
                max_age,
                "must be a duration such as 720h, 90m or 1h30m",
            )),
        }
    }
    if let Some(status) = &quota.status {
        validate_quota_map("status.hard", &status.hard, &mut errors);
        validate_quota_map("status.used", &status.used, &mut errors);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CoredumpQuotaSpec, CoredumpQuotaStatus, CoredumpSpec};
    use serde_json::json;

    fn valid_coredump() -> Coredump {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0-app-20250102030405", "namespace": "ns"},
            "spec": {
                "nodeName": "node-1.example.com",
                "podName": "web-0",
                "podUID": "6f1c1a4e-0000-4000-8000-000000000001",
                "containerName": "app",
                "containerID": "containerd://0123456789abcdef",
                "image": "registry.example.com/app:1.0",
                "pid": 1,
                "hostPID": 4242,
                "signal": 11,
                "signalName": "SIGSEGV",
                "executable": "/usr/bin/app",
                "commandLine": "/usr/bin/app --serve",
                "uid": 1000,
                "gid": 1000,
                "dumpTime": "2025-01-02T03:04:05Z",
                "size": "1Mi",
                "storedSize": "200k",
                "sha256": "0123456789abcdef".repeat(4),
                "truncated": false,
            },
            "status": {"phase": "Stored", "reason": "Uploaded", "message": "ok"},
        }))
        .expect("valid coredump")
    }

    fn fields(errors: &[FieldError]) -> Vec<(&str, &str)> {
        errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason))
            .collect()
    }

    #[test]
    fn valid_coredump_has_no_errors() {
        assert_eq!(validate_coredump(&valid_coredump()), vec![]);
    }

    #[test]
    fn missing_required_fields() {
        let cd: Coredump = serde_json::from_value(json!({
            "metadata": {},
            "spec": {"dumpTime": "2025-01-02T03:04:05Z"},
        }))
        .expect("decodes with defaults");
        let errors = validate_coredump(&cd);
        let r = FieldError::REQUIRED;
        assert_eq!(
            fields(&errors),
            vec![
                ("metadata.name", r),
                ("spec.nodeName", r),
                ("spec.podName", r),
                ("spec.podUID", r),
                ("spec.containerName", r),
                ("spec.signal", r),
                ("spec.size", r),
                ("spec.storedSize", r),
                ("spec.sha256", r),
            ]
        );
        assert_eq!(
            errors[0].message,
            "Required value: name or generateName is required"
        );
        assert_eq!(errors[1].message, "Required value");
    }

    #[test]
    fn invalid_values() {
        let mut cd = valid_coredump();
        let spec: &mut CoredumpSpec = &mut cd.spec;
        spec.node_name = "Node_1".into();
        spec.container_name = "app.main".into();
        spec.pid = Some(0);
        spec.signal = 65;
        spec.signal_name = Some("segv".into());
        spec.uid = Some(-1);
        spec.gid = Some(1 << 32);
        spec.size = Quantity("1.5".into());
        spec.stored_size = Quantity("-1".into());
        spec.sha256 = "0123456789ABCDEF".repeat(4);
        spec.command_line = Some("x".repeat(MAX_COMMAND_LINE + 1));
        cd.status = Some(CoredumpStatus {
            reason: Some("quota exceeded".into()),
            message: Some("m".repeat(MAX_MESSAGE + 1)),
            ..Default::default()
        });
        let errors = validate_coredump(&cd);
        let i = FieldError::INVALID;
        assert_eq!(
            fields(&errors),
            vec![
                ("spec.nodeName", i),
                ("spec.containerName", i),
                ("spec.pid", i),
                ("spec.signal", i),
                ("spec.signalName", i),
                ("spec.commandLine", FieldError::TOO_LONG),
                ("spec.uid", i),
                ("spec.gid", i),
                ("spec.size", i),
                ("spec.storedSize", i),
                ("spec.sha256", i),
                ("status.reason", i),
                ("status.message", FieldError::TOO_LONG),
            ]
        );
        let by_field = |f: &str| {
            errors
                .iter()
                .find(|e| e.field == f)
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            by_field("spec.signal"),
            "Invalid value: 65: must be between 1 and 64, inclusive"
        );
        assert_eq!(
            by_field("spec.size"),
            "Invalid value: \"1.5\": must be a whole number"
        );
        assert_eq!(
            by_field("spec.commandLine"),
            "Too long: may not be more than 4096 bytes"
        );
        assert_eq!(
            errors[0].to_string(),
            format!("spec.nodeName: Invalid value: \"Node_1\": {DNS1123_SUBDOMAIN_MESSAGE}")
        );
    }

    #[test]
    fn metadata_labels_annotations_and_finalizers_are_validated() {
        let mut cd = valid_coredump();
        cd.metadata.labels = Some(
            [
                ("ok.example.com/app".to_string(), "web-1".to_string()),
                ("-bad".to_string(), "x".to_string()),
                ("good".to_string(), "bad value".to_string()),
                ("Bad_Prefix/x".to_string(), "".to_string()),
            ]
            .into(),
        );
        cd.metadata.annotations = Some(
            [
                ("a".to_string(), "x".repeat(MAX_ANNOTATIONS_BYTES)),
                ("a b".to_string(), String::new()),
            ]
            .into(),
        );
        cd.metadata.finalizers = Some(vec![
            "example.com/keep".into(),
            "kubernetes".into(),
            "mine".into(),
            "bad/finalizer/name".into(),
        ]);
        let errors = validate_coredump(&cd);
        let got = fields(&errors);
        let i = FieldError::INVALID;
        for want in [
            ("metadata.labels", i),
            ("metadata.labels[good]", i),
            ("metadata.annotations", i),
            ("metadata.annotations", FieldError::TOO_LONG),
            ("metadata.finalizers[2]", i),
            ("metadata.finalizers[3]", i),
        ] {
            assert!(got.contains(&want), "{want:?} in {got:?}");
        }
        assert_eq!(
            got.iter().filter(|(f, _)| *f == "metadata.labels").count(),
            2,
            "-bad and Bad_Prefix/x: {got:?}"
        );
        assert!(!got
            .iter()
            .any(|(f, _)| f.starts_with("metadata.finalizers[0]")
                || f.starts_with("metadata.finalizers[1]")));
    }

    #[test]
    fn sizes_are_bounded() {
        let mut cd = valid_coredump();
        cd.spec.size = Quantity((MAX_CORE_BYTES + 1).to_string());
        cd.spec.stored_size = Quantity("8Ei".into());
        let errors = validate_coredump(&cd);
        assert_eq!(
            fields(&errors),
            vec![
                ("spec.size", FieldError::INVALID),
                ("spec.storedSize", FieldError::INVALID)
            ]
        );
        cd.spec.size = Quantity("1Pi".into());
        cd.spec.stored_size = Quantity("1Pi".into());
        assert!(validate_coredump(&cd).is_empty());
    }

    #[test]
    fn generate_name_is_checked_when_name_is_absent() {
        let mut cd = valid_coredump();
        cd.metadata.name = None;
        cd.metadata.generate_name = Some("web-0-".into());
        assert_eq!(validate_coredump(&cd), vec![]);
        cd.metadata.generate_name = Some("Web-".into());
        assert_eq!(
            fields(&validate_coredump(&cd)),
            vec![("metadata.generateName", FieldError::INVALID)]
        );
    }

    #[test]
    fn spec_is_immutable() {
        let old = valid_coredump();
        let mut new = old.clone();
        new.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        assert_eq!(validate_coredump_update(&old, &new), vec![]);
        new.spec.signal = 6;
        let errors = validate_coredump_update(&old, &new);
        assert_eq!(fields(&errors), vec![("spec", FieldError::INVALID)]);
        assert_eq!(errors[0].message, "Invalid value: field is immutable");
    }

    #[test]
    fn names() {
        for ok in ["a", "abc", "a-b", "a.b", "0", "web-0.app", &"a".repeat(253)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "é",
            "a.-b",
            &"a".repeat(254),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_label("app"), Ok(()));
        assert!(validate_label("a.b").is_err());
        assert!(validate_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn signal_names_and_reasons() {
        assert!(is_signal_name("SIGSEGV"));
        assert!(is_signal_name("SIGRTMIN+3"));
        assert!(!is_signal_name("SIG"));
        assert!(!is_signal_name("SEGV"));
        assert!(is_reason("QuotaExceeded"));
        assert!(is_reason("Upload_Failed"));
        assert!(!is_reason("1Reason"));
        assert!(!is_reason("Quota Exceeded"));
        assert!(!is_reason(""));
    }

    fn quota(spec: serde_json::Value) -> CoredumpQuota {
        CoredumpQuota {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            spec: serde_json::from_value::<CoredumpQuotaSpec>(spec).expect("spec"),
            status: None,
        }
    }

    #[test]
    fn valid_quota() {
        let q = quota(json!({"hard": {"storage": "10Gi", "count": "20"}, "maxAge": "720h"}));
        assert_eq!(validate_coredump_quota(&q), vec![]);
        assert_eq!(validate_coredump_quota(&quota(json!({}))), vec![]);
    }

    #[test]
    fn invalid_quota() {
        let mut q = quota(json!({
            "hard": {"storage": "-1Gi", "count": "1.5", "memory": "1Gi"},
            "maxAge": "30d",
        }));
        q.status = Some(CoredumpQuotaStatus {
            hard: Default::default(),
            used: [("storage".to_owned(), Quantity("lots".into()))].into(),
        });
        let errors = validate_coredump_quota(&q);
        assert_eq!(
            fields(&errors),
            vec![
                ("spec.hard[count]", FieldError::INVALID),
                ("spec.hard[memory]", FieldError::NOT_SUPPORTED),
                ("spec.hard[storage]", FieldError::INVALID),
                ("spec.maxAge", FieldError::INVALID),
                ("status.used[storage]", FieldError::INVALID),
            ]
        );
        assert_eq!(
            errors[1].message,
            "Unsupported value: \"memory\": supported values: \"count\", \"storage\""
        );
        assert_eq!(
            errors[2].message,
            "Invalid value: \"-1Gi\": must be greater than or equal to 0"
        );
        let zero = quota(json!({"maxAge": "0s"}));
        assert_eq!(
            fields(&validate_coredump_quota(&zero)),
            vec![("spec.maxAge", FieldError::INVALID)]
        );
    }
}
