//! Attribution of a process to a Kubernetes pod and container from the
//! content of `/proc/<pid>/cgroup`.
//!
//! The kubelet names cgroups after the pod UID and the runtime names the
//! container's cgroup after the container ID, so the path alone attributes a
//! crash without asking the runtime or trusting the hostname (`%h`), which is
//! wrong for hostNetwork pods.
//!
//! Invariants (the path is the only thing attribution trusts, so it is read
//! strictly):
//! - A path is a pod's only when the kubelet's own tree starts at one of the
//!   configured cgroup roots (`/` by default; `cgroupRoots` in capture.json
//!   for a kubelet with `--cgroup-root` or nested in another container
//!   manager). `kubepods/…/pod<uid>/<id>` anywhere else (a delegated user
//!   slice, a container's own sub-cgroups under another root) is not a pod:
//!   anyone with a writable cgroup subtree can create those names.
//! - Below the root, every level must be exactly what the kubelet and the
//!   runtime write: cgroupfs
//!   `kubepods[/burstable|/besteffort]/pod<uid>/[<runtime>-]<64 hex>`, or
//!   systemd `kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid
//!   with _>.slice/<runtime>-<64 hex>.scope`, where each slice name repeats
//!   its parent's (systemd encodes a slice's ancestry in its name).
//! - A process must sit in a container's cgroup (or below it: the container
//!   may own its subtree); the pod-level cgroup alone is not a container.
//! - All lines of the file that name a pod must name the same pod and
//!   container; lines that disagree attribute nothing.
//! - `comm` (`%e`, `/proc/<pid>/comm`) is set by the process itself and is
//!   never used here.
//!
//! The agent then accepts the container only if the pod's status names its
//! ID (see `pods`).

use serde::{Deserialize, Serialize};

/// The kubelet's default: its tree starts at the root of the hierarchy.
pub const DEFAULT_ROOT: &str = "/";

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupLine {
    pub hierarchy_id: u32,
    /// Comma-separated controllers; empty for the v2 line (`0::/path`).
    pub controllers: String,
    pub path: String,
}

/// Which cgroup driver the kubelet used, as seen from the path's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// QoS class of the pod; Guaranteed pods have no level in the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The pod and container a cgroup path belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCgroup {
    /// Pod UID with dashes, lower case (as in `metadata.uid`).
    pub pod_uid: String,
    /// Container ID without the runtime prefix: 64 lower-case hex digits.
    pub container_id: String,
    /// Runtime prefix of the container's cgroup (`cri-containerd`, `crio`,
    /// `docker`), if any.
    pub runtime: Option<String>,
    pub qos: QosClass,
    pub driver: Driver,
}

/// Parses the whole file; lines that are not `N:controllers:/path` are
/// skipped rather than failing: a line that cannot be read attributes
/// nothing.
pub fn parse_lines(content: &str) -> Vec<CgroupLine> {
    content
        .lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.trim().parse().ok()?;
            let controllers = it.next()?.to_string();
            let path = it.next()?.to_string();
            if !path.starts_with('/') {
                return None;
            }
            Some(CgroupLine {
                hierarchy_id: id,
                controllers,
                path,
            })
        })
        .collect()
}

/// Finds the pod the process belongs to: every line that names a pod must
/// name the same pod and container (on hybrid hosts the v2 line may be `/`
/// while the kubelet manages the v1 hierarchies; lines that name no pod are
/// ignored). The v2 line's reading is returned when it has one.
pub fn pod_of(lines: &[CgroupLine], roots: &[String]) -> Option<PodCgroup> {
    let v2 = lines.iter().filter(|l| l.hierarchy_id == 0);
    let v1 = lines.iter().filter(|l| l.hierarchy_id != 0);
    let mut found = v2
        .chain(v1)
        .filter_map(|l| parse_kubelet_path(&l.path, roots));
    let first = found.next()?;
    let agree = found
        .all(|other| other.pod_uid == first.pod_uid && other.container_id == first.container_id);
    agree.then_some(first)
}

/// The components of an absolute cgroup path (`/` has none); None for a
/// path that is not absolute or has empty components.
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

/// Parses one cgroup path against the allowed roots (see the module's
/// invariants).
pub fn parse_kubelet_path(path: &str, roots: &[String]) -> Option<PodCgroup> {
    let parts = components(path)?;
    roots.iter().find_map(|root| {
        // A root given as `/kubelet/` means `/kubelet`.
        let trimmed = root.trim_end_matches('/');
        let root_parts = components(if trimmed.is_empty() { "/" } else { trimmed })?;
        let rest = parts.strip_prefix(root_parts.as_slice())?;
        // Under a root that is itself a slice (`/kubelet.slice`), systemd
        // names the kubelet's slices after it (`kubelet-kubepods.slice`).
        let slice_stem = root_parts.last().and_then(|l| l.strip_suffix(".slice"));
        cgroupfs_pod(rest).or_else(|| systemd_pod(rest, slice_stem))
    })
}

/// cgroupfs driver: `kubepods[/burstable|/besteffort]/pod<uid>/<id>[/…]`.
fn cgroupfs_pod(rest: &[&str]) -> Option<PodCgroup> {
    let (qos, pod, container) = match rest {
        ["kubepods", "burstable", pod, c, ..] => (QosClass::Burstable, pod, c),
        ["kubepods", "besteffort", pod, c, ..] => (QosClass::BestEffort, pod, c),
        ["kubepods", pod, c, ..] => (QosClass::Guaranteed, pod, c),
        _ => return None,
    };
    let pod_uid = pod_uid(pod.strip_prefix("pod")?)?;
    let (runtime, container_id) = container_component(container)?;
    Some(PodCgroup {
        pod_uid,
        container_id,
        runtime,
        qos,
        driver: Driver::Cgroupfs,
    })
}

/// systemd driver: `<k>.slice[/<k>-<qos>.slice]/<k>[-<qos>]-pod<uid_>.slice/
/// <runtime>-<id>.scope[/…]`, with `<k>` = `kubepods`, or `<stem>-kubepods`
/// under a root slice `<stem>.slice`.
fn systemd_pod(rest: &[&str], root_stem: Option<&str>) -> Option<PodCgroup> {
    let k = match root_stem {
        Some(stem) => format!("{stem}-kubepods"),
        None => "kubepods".to_string(),
    };
    let (top, rest) = rest.split_first()?;
    if top.strip_suffix(".slice")? != k {
        return None;
    }
    let (qos, pod_slice, scope) = match rest {
        [qos_slice, pod_slice, scope, ..] if qos_slice.ends_with(".slice") => {
            let (qos, word) = match qos_slice.strip_suffix(".slice")?.strip_prefix(&k)? {
                "-burstable" => (QosClass::Burstable, "burstable"),
                "-besteffort" => (QosClass::BestEffort, "besteffort"),
                _ => return guaranteed(&k, rest),
            };
            let uid_ = pod_slice
                .strip_prefix(&format!("{k}-{word}-pod"))?
                .strip_suffix(".slice")?;
            (qos, uid_, scope)
        }
        _ => return guaranteed(&k, rest),
    };
    finish_systemd(qos, pod_slice, scope)
}

/// The Guaranteed form: `<k>-pod<uid_>.slice/<runtime>-<id>.scope`.
fn guaranteed(k: &str, rest: &[&str]) -> Option<PodCgroup> {
    let [pod_slice, scope, ..] = rest else {
        return None;
    };
    let uid_ = pod_slice
        .strip_prefix(&format!("{k}-pod"))?
        .strip_suffix(".slice")?;
    finish_systemd(QosClass::Guaranteed, uid_, scope)
}

fn finish_systemd(qos: QosClass, uid_: &str, scope: &str) -> Option<PodCgroup> {
    // systemd escapes the UID's dashes as underscores: a dash here would be
    // a different slice layout.
    if uid_.contains('-') {
        return None;
    }
    let pod_uid = pod_uid(&uid_.replace('_', "-"))?;
    let (runtime, container_id) = container_component(scope.strip_suffix(".scope")?)?;
    // The runtime's prefix is what makes a scope a container's.
    let runtime = runtime?;
    Some(PodCgroup {
        pod_uid,
        container_id,
        runtime: Some(runtime),
        qos,
        driver: Driver::Systemd,
    })
}

/// Runtime prefixes seen in container cgroup names.
const RUNTIMES: &[&str] = &["cri-containerd", "crio", "docker"];

/// Splits `[<runtime>-]<64 hex>` into runtime and ID. CRI-O's
/// `crio-conmon-<id>` holds the runtime monitor, not the container, so it
/// does not match.
fn container_component(name: &str) -> Option<(Option<String>, String)> {
    for rt in RUNTIMES {
        if let Some(rest) = name.strip_prefix(rt).and_then(|r| r.strip_prefix('-')) {
            return is_container_id(rest).then(|| (Some((*rt).to_string()), rest.to_string()));
        }
    }
    is_container_id(name).then(|| (None, name.to_string()))
}

/// CRI container IDs are 64 lower-case hex digits (a SHA-256).
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pod UIDs are lower-case RFC 4122 UUIDs, except static pods', a 32-digit
/// hex hash without dashes. Upper case is refused: the kubelet never
/// writes it, and one pod must have one spelling.
fn pod_uid(s: &str) -> Option<String> {
    let hex = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let groups: Vec<&str> = s.split('-').collect();
    let uuid = groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| hex(g));
    let static_hash = s.len() == 32 && hex(s);
    (uuid || static_hash).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UID: &str = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
    const UID_: &str = "0b6e2b53_6a8e_4c3c_9d0e_1f2a3b4c5d6e";
    const CID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    fn root() -> Vec<String> {
        vec![DEFAULT_ROOT.to_string()]
    }

    /// (pod UID, container ID, runtime, QoS, driver)
    type Want = (
        &'static str,
        &'static str,
        Option<&'static str>,
        QosClass,
        Driver,
    );

    struct Case {
        name: &'static str,
        path: String,
        roots: Vec<String>,
        want: Option<Want>,
    }

    fn cases() -> Vec<Case> {
        use Driver::*;
        use QosClass::*;
        let c = |name, path: String, want| Case {
            name,
            path,
            roots: root(),
            want,
        };
        let under = |name, roots: &[&str], path: String, want| Case {
            name,
            path,
            roots: roots.iter().map(|r| r.to_string()).collect(),
            want,
        };
        vec![
            c(
                "cgroupfs besteffort",
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                Some((UID, CID, None, BestEffort, Cgroupfs)),
            ),
            c(
                "cgroupfs burstable",
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                Some((UID, CID, None, Burstable, Cgroupfs)),
            ),
            c(
                "cgroupfs guaranteed",
                format!("/kubepods/pod{UID}/{CID}"),
                Some((UID, CID, None, Guaranteed, Cgroupfs)),
            ),
            c(
                "cgroupfs crio prefix",
                format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
                Some((UID, CID, Some("crio"), Burstable, Cgroupfs)),
            ),
            c(
                "cgroupfs sub-cgroup inside the container",
                format!("/kubepods/pod{UID}/{CID}/init"),
                Some((UID, CID, None, Guaranteed, Cgroupfs)),
            ),
            c(
                "cgroupfs static pod hash uid",
                format!("/kubepods/burstable/pod6e1a6c8bd1c8e8ec6ed4d9f0c5d5b4e1/{CID}"),
                Some(("6e1a6c8bd1c8e8ec6ed4d9f0c5d5b4e1", CID, None, Burstable, Cgroupfs)),
            ),
            c(
                "systemd besteffort containerd",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, CID, Some("cri-containerd"), BestEffort, Systemd)),
            ),
            c(
                "systemd burstable crio",
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"
                ),
                Some((UID, CID, Some("crio"), Burstable, Systemd)),
            ),
            c(
                "systemd guaranteed docker",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"),
                Some((UID, CID, Some("docker"), Guaranteed, Systemd)),
            ),
            c(
                "systemd sub-cgroup inside the container",
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope"
                ),
                Some((UID, CID, Some("cri-containerd"), Guaranteed, Systemd)),
            ),
            // Kubelets whose tree starts elsewhere, when configured so.
            under(
                "kind: systemd under a root slice",
                &["/", "/kubelet.slice"],
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, CID, Some("cri-containerd"), BestEffort, Systemd)),
            ),
            under(
                "k3s-style: systemd under a service",
                &["/system.slice/k3s.service/"],
                format!(
                    "/system.slice/k3s.service/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, CID, Some("cri-containerd"), Burstable, Systemd)),
            ),
            under(
                "cgroupfs under a configured root",
                &["/docker/abc"],
                format!("/docker/abc/kubepods/besteffort/pod{UID}/{CID}"),
                Some((UID, CID, None, BestEffort, Cgroupfs)),
            ),
            // The same nestings without their root configured are spoofable.
            c(
                "nested without its root",
                format!("/docker/abc/kubepods/besteffort/pod{UID}/{CID}"),
                None,
            ),
            c(
                "kind without its root",
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                None,
            ),
            // Spoofing: kubelet-shaped names under a writable subtree.
            c(
                "delegated user slice",
                format!("/user.slice/user-1000.slice/kubepods/burstable/pod{UID}/{CID}"),
                None,
            ),
            c(
                "delegated user slice, systemd shape",
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                None,
            ),
            c(
                "another pod's tree inside a container is that container",
                format!(
                    "/kubepods/besteffort/pod{UID}/{CID}/kubepods/pod11111111-2222-3333-4444-555555555555/{}",
                    "e".repeat(64)
                ),
                Some((UID, CID, None, BestEffort, Cgroupfs)),
            ),
            c(
                "systemd slice that does not repeat its parent",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                None,
            ),
            c(
                "systemd uid with dashes",
                format!("/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope"),
                None,
            ),
            c(
                "systemd scope without runtime",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/{CID}.scope"),
                None,
            ),
            // Not containers.
            c("root", "/".into(), None),
            c("user session", "/user.slice/user-0.slice/session-3.scope".into(), None),
            c("system service", "/system.slice/containerd.service".into(), None),
            c("kubepods root", "/kubepods.slice".into(), None),
            c("qos slice only", "/kubepods.slice/kubepods-burstable.slice".into(), None),
            c("cgroupfs qos only", "/kubepods/burstable".into(), None),
            c(
                "cgroupfs pod level is no container",
                format!("/kubepods/besteffort/pod{UID}"),
                None,
            ),
            c(
                "systemd pod level is no container",
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"),
                None,
            ),
            c(
                "crio conmon is not the container",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"),
                None,
            ),
            c("pod dir outside kubepods", format!("/other/pod{UID}/{CID}"), None),
            c("bad uid", format!("/kubepods/podnot-a-uid/{CID}"), None),
            c("upper-case uid", format!("/kubepods/pod{}/{CID}", UID.to_uppercase()), None),
            c("bad container id", format!("/kubepods/pod{UID}/not-hex!"), None),
            c("abbreviated container id", format!("/kubepods/pod{UID}/{}", &CID[..12]), None),
            c("upper-case container id", format!("/kubepods/pod{UID}/{}", CID.to_uppercase()), None),
            c("empty component", format!("/kubepods//pod{UID}/{CID}"), None),
            c(
                "unknown runtime scope",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/rkt-{CID}.scope"),
                None,
            ),
            c("docker outside kubernetes", format!("/docker/{CID}"), None),
            c(
                "systemd slice without kubepods",
                format!("/machine.slice/machine-pod{UID_}.slice/docker-{CID}.scope"),
                None,
            ),
        ]
    }

    #[test]
    fn kubelet_paths_table() {
        for case in cases() {
            let got = parse_kubelet_path(&case.path, &case.roots);
            let want = case.want.map(|(uid, cid, rt, qos, driver)| PodCgroup {
                pod_uid: uid.into(),
                container_id: cid.into(),
                runtime: rt.map(Into::into),
                qos,
                driver,
            });
            assert_eq!(got, want, "case {:?}: {}", case.name, case.path);
        }
    }

    #[test]
    fn parses_v1_and_v2_lines() {
        let content = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{CID}\n4:memory:/process_api/x\n1:name=systemd:/\n0::/\nnot a line\n"
        );
        let lines = parse_lines(&content);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].hierarchy_id, 12);
        assert_eq!(lines[0].controllers, "pids");
        assert_eq!(lines[3].controllers, "");
        assert_eq!(lines[3].path, "/");
        let pod = pod_of(&lines, &root()).expect("v1 pids line attributes the pod");
        assert_eq!(pod.pod_uid, UID);
        assert_eq!(pod.container_id, CID);
    }

    #[test]
    fn lines_that_disagree_attribute_nothing() {
        let other = "11111111-2222-3333-4444-555555555555";
        let content = format!(
            "3:cpu:/kubepods/pod{other}/{CID}\n0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(pod_of(&parse_lines(&content), &root()), None);
        // The same pod on every line: the v2 line's reading.
        let content = format!(
            "3:cpu:/kubepods/pod{UID}/{CID}\n0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        let pod = pod_of(&parse_lines(&content), &root()).expect("pod");
        assert_eq!(pod.driver, Driver::Systemd);
    }

    #[test]
    fn a_path_with_colons_is_kept_whole() {
        let lines = parse_lines("0::/a:b/c\n");
        assert_eq!(lines[0].path, "/a:b/c");
    }

    #[test]
    fn host_process_has_no_pod() {
        let content = "0::/system.slice/sshd.service\n1:name=systemd:/system.slice/sshd.service\n";
        assert_eq!(pod_of(&parse_lines(content), &root()), None);
        assert_eq!(pod_of(&parse_lines(""), &root()), None);
        // No roots: nothing is a pod.
        let pod = format!("0::/kubepods/pod{UID}/{CID}\n");
        assert_eq!(pod_of(&parse_lines(&pod), &[]), None);
    }

    fn uid_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[0-9a-f]{32}",
        ]
    }

    /// A path the kubelet could write, with what it must parse to.
    fn kubelet_path() -> impl Strategy<Value = (String, String, String)> {
        (
            uid_strategy(),
            "[0-9a-f]{64}",
            0usize..3,
            any::<bool>(),
            0usize..3,
            proptest::option::of("[a-z]{1,8}(\\.scope)?"),
        )
            .prop_map(|(uid, cid, qos, systemd, rt, sub)| {
                let qos = ["", "burstable", "besteffort"][qos];
                let mut p = if systemd {
                    let rt = RUNTIMES[rt];
                    let uid_ = uid.replace('-', "_");
                    if qos.is_empty() {
                        format!("/kubepods.slice/kubepods-pod{uid_}.slice/{rt}-{cid}.scope")
                    } else {
                        format!(
                            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/{rt}-{cid}.scope"
                        )
                    }
                } else if qos.is_empty() {
                    format!("/kubepods/pod{uid}/{cid}")
                } else {
                    format!("/kubepods/{qos}/pod{uid}/{cid}")
                };
                if let Some(sub) = sub {
                    p.push('/');
                    p.push_str(&sub);
                }
                (p, uid, cid)
            })
    }

    proptest! {
        // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

        /// Any text: no panic, and whatever parses as a pod names a valid
        /// UID and a 64-hex container ID found in the path itself.
        #[test]
        fn any_file_parses_without_panic(content in "(([0-9]{1,3}|x):[a-z,=]{0,12}:/[ -~]{0,80}\n?){0,6}") {
            let lines = parse_lines(&content);
            for l in &lines {
                prop_assert!(l.path.starts_with('/'));
                prop_assert!(content.contains(&l.path));
            }
            if let Some(p) = pod_of(&lines, &root()) {
                prop_assert!(is_container_id(&p.container_id));
                prop_assert!(content.contains(&p.container_id));
            }
        }

        /// Kubelet paths parse to their pod and container, and the same
        /// path under any other prefix does not parse at all.
        #[test]
        fn kubelet_paths_round_trip_and_prefixes_do_not((path, uid, cid) in kubelet_path(), prefix in "(/[a-z0-9@._-]{1,12}){1,3}") {
            let got = parse_kubelet_path(&path, &root());
            prop_assert_eq!(got.as_ref().map(|p| (&p.pod_uid, &p.container_id)), Some((&uid, &cid)));
            let line = format!("0::{path}\n");
            prop_assert_eq!(pod_of(&parse_lines(&line), &root()), got);
            let spoofed = format!("{prefix}{path}");
            prop_assert_eq!(parse_kubelet_path(&spoofed, &root()), None, "{}", spoofed);
            // Unless that prefix is a configured root.
            let roots = vec![prefix.clone()];
            let nested = parse_kubelet_path(&spoofed, &roots);
            if !prefix.ends_with(".slice") {
                prop_assert_eq!(nested.map(|p| (p.pod_uid, p.container_id)), Some((uid, cid)));
            }
        }
    }
}
