//! Attribution of a process to a Kubernetes pod and container from the
//! content of `/proc/<pid>/cgroup`.
//!
//! The kubelet names cgroups after the pod UID and the runtime names the
//! container's cgroup after the container ID, so the path alone attributes a
//! crash without asking the runtime or trusting the hostname (`%h`), which is
//! wrong for hostNetwork pods.

use serde::{Deserialize, Serialize};

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

/// The pod (and, when the process is in a container's cgroup, the container)
/// a cgroup path belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCgroup {
    /// Pod UID with dashes, lower case (as in `metadata.uid`).
    pub pod_uid: String,
    /// Container ID without the runtime prefix; None for a process that sits
    /// in the pod-level cgroup itself.
    pub container_id: Option<String>,
    /// Runtime prefix of the systemd scope (`cri-containerd`, `crio`,
    /// `docker`), if any.
    pub runtime: Option<String>,
    pub qos: QosClass,
    pub driver: Driver,
}

/// Parses the whole file; lines that are not `N:controllers:/path` are
/// skipped rather than failing, because attribution is best effort.
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

/// Finds the pod the process belongs to. The v2 line is tried first, then
/// the v1 lines in file order: on hybrid hosts the kubelet may manage only
/// the v1 hierarchies while the v2 line is `/`.
pub fn pod_of(lines: &[CgroupLine]) -> Option<PodCgroup> {
    let v2 = lines.iter().filter(|l| l.hierarchy_id == 0);
    let v1 = lines.iter().filter(|l| l.hierarchy_id != 0);
    v2.chain(v1).find_map(|l| parse_kubelet_path(&l.path))
}

/// Parses one cgroup path. Accepts kubelet paths nested under any prefix
/// (kind, k3s and others put the kubepods tree under their own cgroup).
pub fn parse_kubelet_path(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        if let Some(found) = cgroupfs_pod(&parts, i, part) {
            return Some(found);
        }
        if let Some(found) = systemd_pod(&parts, i, part) {
            return Some(found);
        }
    }
    None
}

/// cgroupfs driver: `…/kubepods[/burstable|/besteffort]/pod<uid>/<id>`.
fn cgroupfs_pod(parts: &[&str], i: usize, part: &str) -> Option<PodCgroup> {
    let uid = part.strip_prefix("pod")?;
    let uid = normalize_uid(uid)?;
    // The pod directory must sit right under kubepods or its QoS level, so a
    // random directory named pod<uuid> elsewhere does not match.
    let parent = parts.get(i.checked_sub(1)?)?;
    let qos = match *parent {
        "kubepods" => QosClass::Guaranteed,
        "burstable" | "besteffort" => {
            if *parts.get(i.checked_sub(2)?)? != "kubepods" {
                return None;
            }
            if *parent == "burstable" {
                QosClass::Burstable
            } else {
                QosClass::BestEffort
            }
        }
        _ => return None,
    };
    let (container_id, runtime) = match parts.get(i + 1) {
        None => (None, None),
        Some(child) => {
            let (rt, id) = container_component(child)?;
            (Some(id), rt)
        }
    };
    Some(PodCgroup {
        pod_uid: uid,
        container_id,
        runtime,
        qos,
        driver: Driver::Cgroupfs,
    })
}

/// systemd driver:
/// `…/<prefix>kubepods[-<qos>]-pod<uid_>.slice/<runtime>-<id>.scope`, where
/// the QoS slice and any outer slices come before it.
fn systemd_pod(parts: &[&str], i: usize, part: &str) -> Option<PodCgroup> {
    let stem = part.strip_suffix(".slice")?;
    // systemd slice names encode their ancestry with dashes, so the last
    // "-pod" starts the UID, and "kubepods" must appear before it.
    let at = stem.rfind("-pod")?;
    let (prefix, uid) = (&stem[..at], &stem[at + 4..]);
    let uid = normalize_uid(&uid.replace('_', "-"))?;
    let mut words = prefix.rsplit('-');
    let qos = match words.next()? {
        "kubepods" => QosClass::Guaranteed,
        "burstable" if words.next()? == "kubepods" => QosClass::Burstable,
        "besteffort" if words.next()? == "kubepods" => QosClass::BestEffort,
        _ => return None,
    };
    let (container_id, runtime) = match parts.get(i + 1) {
        None => (None, None),
        Some(child) => {
            let scope = child.strip_suffix(".scope")?;
            let (rt, id) = container_component(scope)?;
            (Some(id), rt)
        }
    };
    Some(PodCgroup {
        pod_uid: uid,
        container_id,
        runtime,
        qos,
        driver: Driver::Systemd,
    })
}

/// Runtime prefixes seen in container cgroup names.
const RUNTIMES: &[&str] = &["cri-containerd", "crio", "docker"];

/// Splits `[<runtime>-]<hex id>[.scope]` into runtime and ID. CRI-O's
/// `crio-conmon-<id>` holds the runtime monitor, not the container, so it
/// does not match.
fn container_component(name: &str) -> Option<(Option<String>, String)> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    for rt in RUNTIMES {
        if let Some(rest) = name.strip_prefix(rt).and_then(|r| r.strip_prefix('-')) {
            return is_container_id(rest).then(|| (Some((*rt).to_string()), rest.to_string()));
        }
    }
    is_container_id(name).then(|| (None, name.to_string()))
}

/// Container IDs from CRI runtimes are 64 lower-case hex digits; shorter hex
/// IDs are accepted for runtimes that abbreviate.
fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Pod UIDs are RFC 4122 UUIDs, except static pods, whose UID is a 32-digit
/// hex hash without dashes.
fn normalize_uid(s: &str) -> Option<String> {
    let s = s.to_ascii_lowercase();
    let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = s.split('-').collect();
    let uuid = groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| hex(g));
    let static_hash = s.len() == 32 && hex(&s);
    (uuid || static_hash).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
    const UID_: &str = "0b6e2b53_6a8e_4c3c_9d0e_1f2a3b4c5d6e";
    const CID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    /// (pod UID, container ID, runtime, QoS, driver)
    type Want = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        QosClass,
        Driver,
    );

    struct Case {
        name: &'static str,
        path: String,
        want: Option<Want>,
    }

    fn cases() -> Vec<Case> {
        use Driver::*;
        use QosClass::*;
        let c = |name, path: String, want| Case { name, path, want };
        vec![
            c(
                "cgroupfs besteffort",
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                Some((UID, Some(CID), None, BestEffort, Cgroupfs)),
            ),
            c(
                "cgroupfs burstable",
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                Some((UID, Some(CID), None, Burstable, Cgroupfs)),
            ),
            c(
                "cgroupfs guaranteed",
                format!("/kubepods/pod{UID}/{CID}"),
                Some((UID, Some(CID), None, Guaranteed, Cgroupfs)),
            ),
            c(
                "cgroupfs crio prefix",
                format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
                Some((UID, Some(CID), Some("crio"), Burstable, Cgroupfs)),
            ),
            c(
                "cgroupfs pod level",
                format!("/kubepods/besteffort/pod{UID}"),
                Some((UID, None, None, BestEffort, Cgroupfs)),
            ),
            c(
                "cgroupfs nested under a prefix",
                format!("/docker/abc/kubepods/besteffort/pod{UID}/{CID}"),
                Some((UID, Some(CID), None, BestEffort, Cgroupfs)),
            ),
            c(
                "cgroupfs sub-cgroup inside the container",
                format!("/kubepods/pod{UID}/{CID}/init"),
                Some((UID, Some(CID), None, Guaranteed, Cgroupfs)),
            ),
            c(
                "cgroupfs static pod hash uid",
                format!("/kubepods/burstable/pod6e1a6c8bd1c8e8ec6ed4d9f0c5d5b4e1/{CID}"),
                Some(("6e1a6c8bd1c8e8ec6ed4d9f0c5d5b4e1", Some(CID), None, Burstable, Cgroupfs)),
            ),
            c(
                "systemd besteffort containerd",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, Some(CID), Some("cri-containerd"), BestEffort, Systemd)),
            ),
            c(
                "systemd burstable crio",
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"
                ),
                Some((UID, Some(CID), Some("crio"), Burstable, Systemd)),
            ),
            c(
                "systemd guaranteed docker",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"),
                Some((UID, Some(CID), Some("docker"), Guaranteed, Systemd)),
            ),
            c(
                "systemd kind nested kubelet.slice",
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, Some(CID), Some("cri-containerd"), BestEffort, Systemd)),
            ),
            c(
                "systemd k3s-style outer prefix",
                format!(
                    "/system.slice/k3s.service/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((UID, Some(CID), Some("cri-containerd"), Burstable, Systemd)),
            ),
            c(
                "systemd pod level",
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"),
                Some((UID, None, None, BestEffort, Systemd)),
            ),
            c(
                "systemd sub-cgroup inside the container",
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope"
                ),
                Some((UID, Some(CID), Some("cri-containerd"), Guaranteed, Systemd)),
            ),
            // Not containers.
            c("root", "/".into(), None),
            c("user session", "/user.slice/user-0.slice/session-3.scope".into(), None),
            c("system service", "/system.slice/containerd.service".into(), None),
            c("kubepods root", "/kubepods.slice".into(), None),
            c("qos slice only", "/kubepods.slice/kubepods-burstable.slice".into(), None),
            c("cgroupfs qos only", "/kubepods/burstable".into(), None),
            c(
                "crio conmon is not the container",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"),
                None,
            ),
            c("pod dir outside kubepods", format!("/other/pod{UID}/{CID}"), None),
            c("bad uid", format!("/kubepods/podnot-a-uid/{CID}"), None),
            c("bad container id", format!("/kubepods/pod{UID}/not-hex!"), None),
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
            let got = parse_kubelet_path(&case.path);
            let want = case.want.map(|(uid, cid, rt, qos, driver)| PodCgroup {
                pod_uid: uid.into(),
                container_id: cid.map(Into::into),
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
        let pod = pod_of(&lines).expect("v1 pids line attributes the pod");
        assert_eq!(pod.pod_uid, UID);
        assert_eq!(pod.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn v2_line_wins_over_v1() {
        let other = "11111111-2222-3333-4444-555555555555";
        let content = format!(
            "3:cpu:/kubepods/pod{other}/{CID}\n0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        let pod = pod_of(&parse_lines(&content)).expect("pod");
        assert_eq!(pod.pod_uid, UID);
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
        assert_eq!(pod_of(&parse_lines(content)), None);
        assert_eq!(pod_of(&parse_lines("")), None);
    }
}
