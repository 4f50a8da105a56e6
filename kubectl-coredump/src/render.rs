//! What the commands print: tables (kubectl's layout), `-o json|yaml|name`, and the
//! `show` page. Pure: objects in, text out.

use coredump_openapi::types::{human_bytes, human_duration, parse_bytes};
use coredump_openapi::{Coredump, CrashGroup};
use serde::Serialize;

use crate::cli::Output;

fn age_of(t: Option<&jiff::Timestamp>, now: jiff::Timestamp) -> String {
    t.map(|t| human_duration(now.as_second() - t.as_second()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn created(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<jiff::Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

fn or_none(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("<none>").to_string()
}

fn size(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> String {
    parse_bytes(&q.0)
        .map(human_bytes)
        .unwrap_or_else(|_| q.0.clone())
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    for r in rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n") + "\n"
}

/// Newest first, as people look for the last crash.
pub fn sort_newest_first(items: &mut [Coredump]) {
    items.sort_by(|a, b| {
        created(&b.metadata)
            .cmp(&created(&a.metadata))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// Most frequent first.
pub fn sort_groups(items: &mut [CrashGroup]) {
    let count = |g: &CrashGroup| g.status.as_ref().map_or(0, |s| s.count);
    items.sort_by(|a, b| {
        count(b)
            .cmp(&count(a))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

pub fn coredump_row(c: &Coredump, all_namespaces: bool, now: jiff::Timestamp) -> Vec<String> {
    let a = c.spec.analysis.as_ref();
    let mut row = Vec::new();
    if all_namespaces {
        row.push(or_none(c.metadata.namespace.as_deref()));
    }
    row.extend([
        or_none(c.metadata.name.as_deref()),
        or_none(a.and_then(|a| a.signature.as_deref())),
        or_none(a.and_then(|a| a.cause.map(|c| c.as_str()))),
        c.spec.pod_name.clone(),
        c.spec.container_name.clone(),
        or_none(c.spec.image.as_deref()),
        size(&c.spec.size),
        size(&c.spec.stored_size),
        or_none(c.status.as_ref().and_then(|s| s.phase.map(|p| p.as_str()))),
        age_of(created(&c.metadata).as_ref(), now),
    ]);
    row
}

pub const COREDUMP_HEADER: [&str; 10] = [
    "NAME",
    "SIGNATURE",
    "CAUSE",
    "POD",
    "CONTAINER",
    "IMAGE",
    "SIZE",
    "STORED",
    "PHASE",
    "AGE",
];

pub fn coredump_table(items: &[Coredump], all_namespaces: bool, with_header: bool) -> String {
    let now = jiff::Timestamp::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| coredump_row(c, all_namespaces, now))
        .collect();
    let mut header: Vec<&str> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(COREDUMP_HEADER);
    let text = table(&header, &rows);
    if with_header {
        text
    } else {
        text.lines().skip(1).map(|l| format!("{l}\n")).collect()
    }
}

pub fn group_table(items: &[CrashGroup], all_namespaces: bool) -> String {
    let now = jiff::Timestamp::now();
    let mut header: Vec<&str> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME",
        "SIGNATURE",
        "CAUSE",
        "COUNT",
        "LAST SEEN",
        "EXECUTABLE",
    ]);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            let mut row = Vec::new();
            if all_namespaces {
                row.push(or_none(g.metadata.namespace.as_deref()));
            }
            let st = g.status.as_ref();
            row.extend([
                or_none(g.metadata.name.as_deref()),
                or_none(g.spec.signature.as_deref()),
                or_none(g.spec.cause.map(|c| c.as_str())),
                st.map_or(0, |s| s.count).to_string(),
                age_of(st.map(|s| &s.last_seen.0), now),
                or_none(g.spec.executable.as_deref()),
            ]);
            row
        })
        .collect();
    table(&header, &rows)
}

/// `-o json|yaml|name` of a list, as kubectl prints a List of objects.
pub fn objects<T: Serialize>(
    items: &[T],
    kind_plural: &str,
    output: Output,
) -> Result<String, String> {
    match output {
        Output::Json | Output::Yaml => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}});
            if output == Output::Json {
                serde_json::to_string_pretty(&list)
                    .map(|s| s + "\n")
                    .map_err(|e| e.to_string())
            } else {
                serde_yaml::to_string(&list).map_err(|e| e.to_string())
            }
        }
        Output::Name => {
            let mut out = String::new();
            for i in items {
                let v = serde_json::to_value(i).map_err(|e| e.to_string())?;
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let kind = kind_plural.trim_end_matches('s');
                out.push_str(&format!("{kind}.coredump.io/{name}\n"));
            }
            Ok(out)
        }
        Output::Wide => Err("-o wide: use the table (the default) instead".into()),
    }
}

/// The `show` page.
pub fn show(c: &Coredump, group: Option<&CrashGroup>) -> String {
    let mut o = String::new();
    let push = |o: &mut String, k: &str, v: String| o.push_str(&format!("{k:<14}{v}\n"));
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let name = c.metadata.name.clone().unwrap_or_default();
    push(&mut o, "Name:", name.clone());
    push(&mut o, "Namespace:", ns.clone());
    push(
        &mut o,
        "Pod:",
        format!("{} (container {})", c.spec.pod_name, c.spec.container_name),
    );
    push(&mut o, "Image:", or_none(c.spec.image.as_deref()));
    push(&mut o, "Node:", c.spec.node_name.clone());
    push(&mut o, "Executable:", or_none(c.spec.executable.as_deref()));
    push(&mut o, "Command:", or_none(c.spec.command_line.as_deref()));
    push(
        &mut o,
        "Signal:",
        format!(
            "{} ({})",
            or_none(c.spec.signal_name.as_deref()),
            c.spec.signal
        ),
    );
    push(&mut o, "Dumped:", c.spec.dump_time.0.to_string());
    push(
        &mut o,
        "Size:",
        format!(
            "{} ({} stored){}",
            size(&c.spec.size),
            size(&c.spec.stored_size),
            if c.spec.truncated == Some(true) {
                ", truncated"
            } else {
                ""
            }
        ),
    );
    push(&mut o, "SHA-256:", c.spec.sha256.clone());
    let status = c.status.clone().unwrap_or_default();
    push(
        &mut o,
        "Phase:",
        format!(
            "{}{}{}",
            or_none(status.phase.map(|p| p.as_str())),
            status.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            status.message.map(|m| format!(": {m}")).unwrap_or_default()
        ),
    );
    match &c.spec.analysis {
        None => o.push_str("\nNo crash analysis was recorded for this core.\n"),
        Some(a) => {
            o.push('\n');
            push(
                &mut o,
                "Cause:",
                format!(
                    "{}{}",
                    or_none(a.cause.map(|c| c.as_str())),
                    a.cause_message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            );
            if let Some(s) = &a.signal {
                push(
                    &mut o,
                    "Signal info:",
                    format!(
                        "{} code {} {}{}",
                        or_none(s.name.as_deref()),
                        s.code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                        s.code_name.clone().unwrap_or_default(),
                        s.fault_address
                            .as_ref()
                            .map(|f| format!(", fault address {f}"))
                            .unwrap_or_default()
                    ),
                );
            }
            push(&mut o, "Signature:", or_none(a.signature.as_deref()));
            push(&mut o, "Fingerprint:", or_none(a.fingerprint.as_deref()));
            if let Some(state) = a.state {
                let state = format!("{state:?}");
                push(
                    &mut o,
                    "Analysis:",
                    format!(
                        "{state}{}",
                        a.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                );
            }
            if let Some(t) = &a.crashing_thread {
                o.push_str(&format!(
                    "\nCrashing thread {}{}:\n",
                    t.tid,
                    t.name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
                for (i, f) in t.frames.iter().enumerate() {
                    let func = f.function.clone().unwrap_or_else(|| "??".into());
                    let place = match (&f.file, f.line) {
                        (Some(file), Some(line)) => format!(" at {file}:{line}"),
                        (Some(file), None) => format!(" at {file}"),
                        _ => String::new(),
                    };
                    let module = f
                        .module
                        .as_ref()
                        .map(|m| {
                            format!(
                                " in {}{}",
                                m,
                                f.offset
                                    .as_ref()
                                    .map(|o| format!("+{o}"))
                                    .unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    o.push_str(&format!("  #{i:<2} {func}{place}{module}\n"));
                }
            }
            if !a.threads.is_empty() {
                o.push_str("\nThreads:\n");
                for t in &a.threads {
                    o.push_str(&format!(
                        "  {:<8} {:<16} {}\n",
                        t.tid,
                        t.name.clone().unwrap_or_default(),
                        t.top_frame.clone().unwrap_or_else(|| "??".into())
                    ));
                }
            }
            if let Some(log) = &a.log_tail {
                o.push_str("\nLast lines the container wrote:\n");
                for l in log.lines() {
                    o.push_str(&format!("  | {l}\n"));
                }
            }
        }
    }
    if let Some(g) = group {
        let st = g.status.as_ref();
        o.push_str(&format!(
            "\nCrash group:  {} ({} crashes{})\n",
            g.metadata.name.clone().unwrap_or_default(),
            st.map_or(0, |s| s.count),
            st.map(|s| format!(", first {}, last {}", s.first_seen.0, s.last_seen.0))
                .unwrap_or_default()
        ));
    }
    o.push_str(&format!(
        "\nDownload:\n  kubectl coredump get {name} -n {ns}\n  kubectl coredump gdb {name} -n {ns} --sysroot DIR\n  kubectl get --raw /apis/coredump.io/v1alpha1/namespaces/{ns}/coredumps/{name}/download > {name}.core\n"
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let t = table(
            &["NAME", "COUNT"],
            &[
                vec!["a".into(), "10".into()],
                vec!["longer".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME     COUNT\na        10\nlonger   2\n");
    }

    #[test]
    fn rows_carry_signature_cause_and_human_sizes() {
        let c: Coredump = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n", "podName": "web", "podUID": "u", "containerName": "app",
                     "signal": 11, "dumpTime": "2026-01-01T00:00:00Z", "size": "17196646",
                     "storedSize": "1Mi", "sha256": "x",
                     "analysis": {"signature": "parse_header", "cause": "NullPointerDereference"}},
            "status": {"phase": "Stored"}
        }))
        .expect("coredump");
        let row = coredump_row(
            &c,
            false,
            jiff::Timestamp::from_second(1_767_225_660).expect("ts"),
        );
        assert_eq!(
            row,
            [
                "web-1",
                "parse_header",
                "NullPointerDereference",
                "web",
                "app",
                "<none>",
                "16.4Mi",
                "1Mi",
                "Stored",
                "60s"
            ]
        );
        let page = show(&c, None);
        assert!(
            page.contains("Cause:        NullPointerDereference"),
            "{page}"
        );
        assert!(page.contains("kubectl coredump get web-1 -n ns"), "{page}");
    }
}
