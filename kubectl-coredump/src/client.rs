//! Connecting as kubectl would (kubeconfig, context, impersonation, request timeout) and
//! the one place errors become what kubectl prints: `Error from server (Forbidden): …`.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::Global;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with a Status: printed as kubectl prints it.
    #[error("Error from server ({reason}): {message}")]
    Server { reason: String, message: String },
    #[error("error: {0}")]
    Config(String),
    #[error("error: {0}")]
    Usage(String),
    #[error("error: {0}")]
    Transport(String),
    #[error("error: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("error: {0}")]
    Verify(String),
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// A Status body (or a bare HTTP code) as kubectl shows it.
    pub fn from_status(code: u16, body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let reason = v["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("Unknown")
                    .replace(' ', "")
            });
        let message = v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        Self::Server { reason, message }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Self::Server {
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => Self::Transport(other.to_string()),
        }
    }
}

/// Who we talk to, and in which namespace by default.
pub struct Target {
    pub client: kube::Client,
    pub namespace: String,
    pub request_timeout: Option<Duration>,
}

/// kubectl's duration syntax for --request-timeout and --older-than: Go durations, a bare
/// number of seconds, and days (`7d`).
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        return days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| Error::Usage(format!("duration {s:?} is too long")));
    }
    coredump_openapi::types::parse_duration(s)
        .map_err(|e| Error::Usage(format!("invalid duration {s:?}: {e}")))
}

pub async fn connect(g: &Global) -> Result<Target, Error> {
    let kubeconfig = match &g.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| Error::Config(e.to_string()))?;
    let opts = KubeConfigOptions {
        context: g.context.clone(),
        cluster: g.cluster.clone(),
        user: g.user.clone(),
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(user) = &g.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !g.as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(g.as_group.clone());
    }
    let request_timeout = match &g.request_timeout {
        Some(t) => Some(parse_duration(t)?).filter(|d| !d.is_zero()),
        None => None,
    };
    if let Some(t) = request_timeout {
        config.read_timeout = Some(t);
        config.write_timeout = Some(t);
    }
    let namespace = g
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Target {
        client,
        namespace,
        request_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_print_as_kubectl_prints_them() {
        let e = Error::from_status(
            403,
            br#"{"kind":"Status","reason":"Forbidden","message":"coredumps.coredump.io is forbidden: User \"alice\" cannot list"}"#,
        );
        assert_eq!(
            e.to_string(),
            "Error from server (Forbidden): coredumps.coredump.io is forbidden: User \"alice\" cannot list"
        );
        assert_eq!(
            Error::from_status(503, b"no endpoints").to_string(),
            "Error from server (ServiceUnavailable): no endpoints"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("7d").expect("d"),
            Duration::from_secs(604_800)
        );
        assert_eq!(parse_duration("90").expect("s"), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1h30m").expect("go"),
            Duration::from_secs(5400)
        );
        assert!(parse_duration("soon").is_err());
    }
}
