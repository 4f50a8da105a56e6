//! The commands: each reads through the API (RBAC applies as to kubectl), prints, and
//! returns an [`Error`] that `main` prints as kubectl would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};

use coredump_openapi::types::crash_group_name;
use coredump_openapi::{Coredump, CrashGroup};

use crate::cli::{Command, Output};
use crate::client::{parse_duration, Error, Target};
use crate::download::{self, Source};
use crate::render;

fn coredumps(t: &Target, all: bool) -> Api<Coredump> {
    if all {
        Api::all(t.client.clone())
    } else {
        Api::namespaced(t.client.clone(), &t.namespace)
    }
}

fn groups(t: &Target, all: bool) -> Api<CrashGroup> {
    if all {
        Api::all(t.client.clone())
    } else {
        Api::namespaced(t.client.clone(), &t.namespace)
    }
}

/// A group given by fingerprint (`v1:…`) or by its name.
async fn fingerprint_of(t: &Target, group: &str) -> Result<String, Error> {
    if group.starts_with(coredump_openapi::types::analysis::FINGERPRINT_PREFIX) {
        return Ok(group.to_string());
    }
    let g = groups(t, false).get(group).await?;
    Ok(g.spec.fingerprint)
}

fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub async fn run(t: &Target, command: Command) -> Result<(), Error> {
    match command {
        Command::List {
            all_namespaces,
            selector,
            group,
            watch,
            output,
        } => list(t, all_namespaces, selector, group, watch, output).await,
        Command::Show { name } => show(t, &name).await,
        Command::Groups {
            all_namespaces,
            output,
        } => {
            let mut items = groups(t, all_namespaces)
                .list(&ListParams::default())
                .await?
                .items;
            render::sort_groups(&mut items);
            match output {
                None | Some(Output::Wide) => {
                    if items.is_empty() {
                        eprintln!(
                            "No crash groups found in {} namespace.",
                            ns_label(t, all_namespaces)
                        );
                    } else {
                        print(&render::group_table(&items, all_namespaces));
                    }
                }
                Some(o) => print(&render::objects(&items, "crashgroups", o).map_err(Error::Usage)?),
            }
            Ok(())
        }
        Command::Get {
            name,
            output,
            compressed,
            piece_seconds,
        } => {
            let out = output.unwrap_or_else(|| {
                PathBuf::from(if compressed {
                    format!("{name}.core.zst")
                } else {
                    format!("{name}.core")
                })
            });
            let o = fetch(t, &name, &out, compressed, piece_seconds).await?;
            eprintln!(
                "{} written: sha256 verified; {} pieces, fetched {} bytes (resumed at {})",
                o.path.display(),
                o.pieces,
                o.fetched,
                o.resumed_at
            );
            Ok(())
        }
        Command::Gdb {
            name,
            sysroot,
            gdb_args,
        } => gdb(t, &name, sysroot.as_deref(), &gdb_args).await,
        Command::Delete {
            names,
            group,
            older_than,
        } => delete(t, names, group, older_than).await,
    }
}

fn ns_label(t: &Target, all: bool) -> String {
    if all {
        "any".into()
    } else {
        t.namespace.clone()
    }
}

async fn list(
    t: &Target,
    all: bool,
    selector: Option<String>,
    group: Option<String>,
    watch: bool,
    output: Option<Output>,
) -> Result<(), Error> {
    let api = coredumps(t, all);
    let mut lp = ListParams::default();
    if let Some(s) = &selector {
        lp = lp.labels(s);
    }
    let field = match &group {
        Some(g) => Some(format!(
            "spec.analysis.fingerprint={}",
            fingerprint_of(t, g).await?
        )),
        None => None,
    };
    if let Some(f) = &field {
        lp = lp.fields(f);
    }
    let list = api.list(&lp).await?;
    let rv = list.metadata.resource_version.clone().unwrap_or_default();
    let mut items = list.items;
    render::sort_newest_first(&mut items);
    match output {
        None | Some(Output::Wide) => {
            if items.is_empty() && !watch {
                eprintln!("No core dumps found in {} namespace.", ns_label(t, all));
            } else {
                print(&render::coredump_table(&items, all, true));
            }
        }
        Some(o) => print(&render::objects(&items, "coredumps", o).map_err(Error::Usage)?),
    }
    if !watch {
        return Ok(());
    }
    let mut wp = WatchParams::default();
    if let Some(s) = &selector {
        wp = wp.labels(s);
    }
    if let Some(f) = &field {
        wp = wp.fields(f);
    }
    let mut stream = api.watch(&wp, &rv).await?.boxed();
    while let Some(ev) = stream.try_next().await? {
        let obj = match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => {
                return Err(Error::Server {
                    reason: e.reason,
                    message: e.message,
                })
            }
        };
        match output {
            None | Some(Output::Wide) => print(&render::coredump_table(
                std::slice::from_ref(&obj),
                all,
                false,
            )),
            Some(o) => print(
                &render::objects(std::slice::from_ref(&obj), "coredumps", o)
                    .map_err(Error::Usage)?,
            ),
        }
    }
    Ok(())
}

async fn show(t: &Target, name: &str) -> Result<(), Error> {
    let c = coredumps(t, false).get(name).await?;
    let group = match c.spec.analysis.as_ref().and_then(|a| a.fingerprint.clone()) {
        Some(fp) => {
            let gname = crash_group_name(
                &fp,
                c.spec.executable.as_deref(),
                c.spec
                    .analysis
                    .as_ref()
                    .and_then(|a| a.signature.as_deref()),
            );
            // A group the user may not read is left out, not an error.
            groups(t, false).get_opt(&gname).await.ok().flatten()
        }
        None => None,
    };
    print(&render::show(&c, group.as_ref()));
    Ok(())
}

/// The seconds one piece should take: well inside the request timeout.
fn piece_target(t: &Target, explicit: Option<f64>) -> Duration {
    if let Some(s) = explicit.filter(|s| s.is_finite() && *s > 0.0) {
        return Duration::from_secs_f64(s);
    }
    match t.request_timeout {
        Some(rt) => (rt / 3).clamp(Duration::from_millis(200), Duration::from_secs(15)),
        // kube-apiserver's default --request-timeout is 60s.
        None => Duration::from_secs(10),
    }
}

async fn fetch(
    t: &Target,
    name: &str,
    out: &Path,
    compressed: bool,
    piece_seconds: Option<f64>,
) -> Result<download::Outcome, Error> {
    let c = coredumps(t, false).get(name).await?;
    let phase = c.status.as_ref().and_then(|s| s.phase);
    if phase != Some(coredump_openapi::CoredumpPhase::Stored) {
        return Err(Error::Usage(format!(
            "coredump {name} is {}: there is no stored core to download",
            phase.map_or("without a phase", |p| p.as_str())
        )));
    }
    let bytes = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        coredump_openapi::types::parse_bytes(&q.0)
            .map_err(|e| Error::Verify(format!("the Coredump's size {:?}: {e}", q.0)))
    };
    let src = Source {
        namespace: t.namespace.clone(),
        name: name.to_string(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
        sha256: c.spec.sha256.clone(),
        total: if compressed {
            bytes(&c.spec.stored_size)?
        } else {
            bytes(&c.spec.size)?
        },
        compressed,
    };
    download::download(&t.client, &src, out, piece_target(t, piece_seconds)).await
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kubectl-coredump")
}

async fn gdb(t: &Target, name: &str, sysroot: Option<&Path>, args: &[String]) -> Result<(), Error> {
    let c = coredumps(t, false).get(name).await?;
    let uid = c.metadata.uid.clone().unwrap_or_default();
    let dir = cache_dir().join(&t.namespace);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let core = dir.join(format!("{name}-{uid}.core"));
    if !core.exists() {
        let o = fetch(t, name, &core, false, None).await?;
        eprintln!(
            "core cached at {} ({} bytes fetched)",
            o.path.display(),
            o.fetched
        );
    }
    let mut cmd = std::process::Command::new("gdb");
    match (sysroot, c.spec.executable.as_deref()) {
        (Some(root), exe) => {
            cmd.arg("-ex")
                .arg(format!("set sysroot {}", root.display()));
            if let Some(exe) = exe {
                cmd.arg(root.join(exe.trim_start_matches('/')));
            }
        }
        (None, _) => {
            let image = c.spec.image.clone().unwrap_or_else(|| "IMAGE".into());
            eprintln!(
                "No --sysroot: gdb gets the core alone, without the executable and libraries it ran.\n\
                 To give it the image's filesystem, unpack the image and pass the directory, e.g.:\n  \
                 mkdir rootfs && crane export {image} - | tar -x -C rootfs\n  \
                 (or: ctr -n k8s.io images export / podman export of a container of it)\n  \
                 kubectl coredump gdb {name} -n {} --sysroot rootfs",
                t.namespace
            );
        }
    }
    cmd.arg("-c").arg(&core).args(args);
    let status = cmd
        .status()
        .map_err(Error::io("start gdb (is it installed?)"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Usage(format!("gdb exited with {status}")))
    }
}

async fn delete(
    t: &Target,
    names: Vec<String>,
    group: Option<String>,
    older_than: Option<String>,
) -> Result<(), Error> {
    let api = coredumps(t, false);
    let mut targets = names;
    if let Some(g) = &group {
        let fp = fingerprint_of(t, g).await?;
        let lp = ListParams::default().fields(&format!("spec.analysis.fingerprint={fp}"));
        targets.extend(
            api.list(&lp)
                .await?
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name),
        );
    }
    if let Some(age) = &older_than {
        let age = parse_duration(age)?;
        let cutoff =
            jiff::Timestamp::now().as_second() - i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        targets.extend(
            api.list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|c| {
                    c.metadata
                        .creation_timestamp
                        .as_ref()
                        .is_some_and(|ts| ts.0.as_second() < cutoff)
                })
                .filter_map(|c| c.metadata.name),
        );
    }
    if targets.is_empty() {
        return Err(Error::Usage("give names, --group or --older-than".into()));
    }
    targets.sort();
    targets.dedup();
    let mut failed = None;
    for name in targets {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => println!("coredump.coredump.io \"{name}\" deleted"),
            Err(e) => {
                let e = Error::from(e);
                eprintln!("{e}");
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}
