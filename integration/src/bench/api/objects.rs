//! The objects: Coredumps like the node agent's, deterministic and varied per index
//! (names never collide), with the benchmark's label groups.

use super::*;

/// One Coredump to create.
pub(super) struct Obj {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) group: usize,
    /// Its storedSize, for the namespace's quota.
    pub(super) stored: u64,
    pub(super) body: Vec<u8>,
}

/// splitmix64's finalizer: deterministic variety without a random number generator.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn hex(seed: u64, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut k = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{:016x}",
            mix(seed ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93))
        ));
        k += 1;
    }
    s.truncate(len);
    s
}

/// (container and app, image, executable, arguments)
pub(super) const APPS: &[(&str, &str, &str, &str)] = &[
    (
        "checkout",
        "registry.example.com/shop/checkout:1.27.3",
        "/usr/local/bin/checkout",
        "--config /etc/checkout/config.yaml --port 8080",
    ),
    (
        "payments",
        "registry.example.com/shop/payments:4.2.0",
        "/app/payments",
        "serve --grpc-port 9090 --db-pool 32",
    ),
    (
        "search",
        "registry.example.com/platform/search-engine:2024.11.2",
        "/opt/search/bin/searchd",
        "--index /data/index --threads 8",
    ),
    (
        "thumbnailer",
        "registry.example.com/media/thumbnailer:0.9.14",
        "/usr/bin/thumbnailer",
        "--queue thumbnails --max-size 4096",
    ),
    (
        "envoy",
        "docker.io/envoyproxy/envoy:v1.31.2",
        "/usr/local/bin/envoy",
        "-c /etc/envoy/envoy.yaml --log-level warn",
    ),
];

/// The `i`-th Coredump of a target, as the node agent writes one (labels included), plus
/// the benchmark's group label.
pub(super) fn object(target: Target, namespaces: &[String], i: usize) -> Result<Obj, Error> {
    let n = i as u64;
    let (app, image, exe, args) = APPS[i % APPS.len()];
    // A pod crashes a few times before it is fixed.
    let pod_seed = n / 3;
    let pod = format!(
        "{app}-{}-{}",
        hex(pod_seed ^ 0x5eed, 10),
        hex(pod_seed ^ 0xfeed, 5)
    );
    // Multiplying by an odd constant is a bijection mod 2^40: names never collide.
    let name = format!(
        "{pod}-{:010x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xff_ffff_ffff
    );
    let node = format!("worker-{:02}", mix(pod_seed) % 20);
    let uid = hex(pod_seed ^ 0x0001_d000, 32);
    let pod_uid = format!(
        "{}-{}-{}-{}-{}",
        &uid[..8],
        &uid[8..12],
        &uid[12..16],
        &uid[16..20],
        &uid[20..]
    );
    let r = mix(n);
    let (signal, signal_name) = match r % 10 {
        0..=5 => (11, "SIGSEGV"),
        6..=8 => (6, "SIGABRT"),
        _ => (7, "SIGBUS"),
    };
    let size = (64 + (r >> 8) % 960) << 20;
    let stored = size / (4 + (r >> 20) % 8);
    let group = i % GROUPS;
    let namespace = namespaces[i % namespaces.len()].clone();
    let mut labels = json!({
        "coredump.io/node": node,
        "coredump.io/pod": pod,
        "coredump.io/container": app,
        GROUP_LABEL: format!("g{group}"),
    });
    if group != 0 {
        labels[SEEN_LABEL] = json!("yes");
    }
    let body = json!({
        "apiVersion": target.api_version(),
        "kind": "Coredump",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "nodeName": node,
            "podName": pod,
            "podUID": pod_uid,
            "containerName": app,
            "containerID": format!("containerd://{}", hex(pod_seed ^ 0xc0c0, 64)),
            "image": image,
            "pid": 1 + (r >> 32) % 40,
            "hostPID": 1000 + (r >> 16) % 4_000_000,
            "signal": signal,
            "signalName": signal_name,
            "executable": exe,
            "commandLine": format!("{exe} {args}"),
            "uid": 65532,
            "gid": 65532,
            "dumpTime": format!(
                "2026-11-25T{:02}:{:02}:{:02}Z",
                9 + (i / 3600) % 14,
                (i / 60) % 60,
                i % 60
            ),
            "size": size.to_string(),
            "storedSize": stored.to_string(),
            "sha256": hex(n ^ 0x5a5a_5a5a, 64),
        },
    });
    Ok(Obj {
        namespace,
        name,
        group,
        stored,
        body: serde_json::to_vec(&body).map_err(Error::Json)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_have_unique_names_and_valid_fields() {
        let ns = vec!["a".to_string(), "b".to_string()];
        let mut names = std::collections::HashSet::new();
        for i in 0..2000 {
            let o = object(Target::Aggregated, &ns, i).expect("object");
            assert!(names.insert(o.name.clone()), "duplicate {}", o.name);
            let v: Value = serde_json::from_slice(&o.body).expect("json");
            assert!(o.name.len() <= 253);
            for l in v["metadata"]["labels"]
                .as_object()
                .expect("labels")
                .values()
            {
                assert!(l.as_str().is_some_and(|s| s.len() <= 63));
            }
            assert_eq!(v["spec"]["sha256"].as_str().map(str::len), Some(64));
        }
    }
}
