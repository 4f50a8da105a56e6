//! One target: namespaces and quotas, the creates at a given number in flight, the
//! lists and the watch, and the clean-up that leaves the next target an empty store.

use super::*;

pub(super) fn base(target: Target) -> &'static str {
    match target {
        Target::Crd => CRD_BASE,
        Target::Aggregated | Target::Direct => OUR_BASE,
    }
}

pub(super) async fn run_target(
    target: Target,
    admin: &Client,
    client: &Client,
    direct: &Client,
    opts: &ApiOptions,
) -> Result<TargetResults, Error> {
    let namespaces: Vec<String> = (0..opts.namespaces.max(1))
        .map(|i| format!("{}-{i}", target.namespace_prefix()))
        .collect();
    let objects = (0..opts.objects)
        .map(|i| object(target, &namespaces, i))
        .collect::<Result<Vec<_>, _>>()?;
    setup_namespaces(target, admin, client, &namespaces, &objects).await?;
    let warmup = warm_up(client, target, &namespaces, opts.objects).await?;

    let all = format!("{}/coredumps", base(target));
    // The watch starts where a list would: at the current revision.
    let start_rv = current_rv(client, &all).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let mut watch = tokio::spawn(watch_adds(
        client.clone(),
        all.clone(),
        start_rv,
        format!("{}-", target.namespace_prefix()),
        objects.len(),
        stop_rx,
    ));

    let flushes_before = flush_stats(direct, target).await;
    let (create, acks, first_sent) = create_all(client, target, &objects, opts.concurrency).await;
    let flushes = match (flushes_before, flush_stats(direct, target).await) {
        (Some(b), Some(a)) => Some(a.since(b)),
        _ => None,
    };

    // Generous: as long as the creates took, and at least 30 s, for the rest to arrive.
    let grace = create.total.max(Duration::from_secs(30));
    let log = match tokio::time::timeout(grace, &mut watch).await {
        Ok(done) => done,
        Err(_) => {
            let _ = stop_tx.send(());
            watch.await
        }
    }
    .map_err(|e| Error::Setup(format!("watch task: {e}")))?;
    let watch = watch_result(&log, &acks, first_sent, objects.len());

    let label = format!("{GROUP_LABEL}=g0");
    let in_label = objects.iter().filter(|o| o.group == 0).count();
    let ns0 = &namespaces[0];
    let in_ns0 = objects.iter().filter(|o| &o.namespace == ns0).count();
    let list_all = list(client, &all, None, objects.len(), opts.list_repeats).await;
    let list_label = list(client, &all, Some(&label), in_label, opts.list_repeats).await;
    let label_in = format!("{GROUP_LABEL} in (g0,g1)");
    let in_set = objects.iter().filter(|o| o.group < 2).count();
    let list_label_in = list(client, &all, Some(&label_in), in_set, opts.list_repeats).await;
    let absent = format!("!{SEEN_LABEL}");
    let list_label_absent = list(client, &all, Some(&absent), in_label, opts.list_repeats).await;
    let list_namespace = list(
        client,
        &format!("{}/namespaces/{ns0}/coredumps", base(target)),
        None,
        in_ns0,
        opts.list_repeats,
    )
    .await;

    // How throughput grows with the creates in flight: fresh objects for each level.
    let mut sweep = Vec::new();
    let mut next = opts.objects;
    for &level in &opts.sweep {
        let batch = (next..next + opts.sweep_objects)
            .map(|i| object(target, &namespaces, i))
            .collect::<Result<Vec<_>, _>>()?;
        next += opts.sweep_objects;
        let (result, _, _) = create_all(client, target, &batch, level).await;
        sweep.push((level, result));
    }

    // The next target starts from an empty store: ours serves two of the targets.
    cleanup(client, target, &namespaces, next).await?;

    Ok(TargetResults {
        target,
        warmup,
        create,
        list_all,
        list_label,
        list_label_in,
        list_label_absent,
        list_namespace,
        watch,
        sweep,
        flushes,
    })
}

/// Our server's flush metrics now (scraped directly: through the aggregator /metrics is
/// kube-apiserver's); `None` for the CRD or when they cannot be read.
pub(super) async fn flush_stats(direct: &Client, target: Target) -> Option<FlushStats> {
    if !target.is_ours() {
        return None;
    }
    let req = Request::new("")
        .get("metrics", &kube::api::GetParams::default())
        .ok()?;
    let text = direct.request_text(req).await.ok()?;
    FlushStats::parse(&text)
}

/// Namespaces (created by the admin in kube-apiserver) and, for ours, a CoredumpQuota in
/// each with room for twice its share: quota admission runs on every create and admits.
pub(super) async fn setup_namespaces(
    target: Target,
    admin: &Client,
    client: &Client,
    namespaces: &[String],
    objects: &[Obj],
) -> Result<(), Error> {
    let mut share: HashMap<&str, (u64, u64)> = HashMap::new();
    for o in objects {
        let s = share.entry(o.namespace.as_str()).or_default();
        s.0 += o.stored;
        s.1 += 1;
    }
    let results: Vec<Result<(), Error>> = futures::stream::iter(namespaces)
        .map(|ns| {
            let (storage, count) = share.get(ns.as_str()).copied().unwrap_or_default();
            async move {
                let body = json!({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}});
                create_ignoring_conflict(admin, "/api/v1/namespaces", &body).await?;
                if target.is_ours() {
                    let quota = json!({
                        "apiVersion": OUR_API_VERSION, "kind": "CoredumpQuota",
                        "metadata": {"name": "bench", "namespace": ns},
                        "spec": {"hard": {
                            "storage": (storage * 2).max(1).to_string(),
                            "count": (count * 2).max(1).to_string(),
                        }},
                    });
                    let path = format!("{OUR_BASE}/namespaces/{ns}/coredumpquotas");
                    create_ignoring_conflict(client, &path, &quota).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Creates and deletes one more object (index `objects`, so its name is unused).
pub(super) async fn warm_up(
    client: &Client,
    target: Target,
    namespaces: &[String],
    objects: usize,
) -> Result<Duration, Error> {
    let o = object(target, namespaces, objects)?;
    let path = format!("{}/namespaces/{}/coredumps", base(target), o.namespace);
    let t = Instant::now();
    let req = build(
        &path,
        Request::new(&path).create(&PostParams::default(), o.body),
    )?;
    client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("warm-up create in {path}"), e))?;
    let took = t.elapsed();
    let req = build(
        &path,
        Request::new(&path).delete(&o.name, &DeleteParams::default()),
    )?;
    client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("warm-up delete in {path}"), e))?;
    Ok(took)
}

pub(super) async fn create_ignoring_conflict(
    client: &Client,
    path: &str,
    body: &Value,
) -> Result<(), Error> {
    let body = serde_json::to_vec(body).map_err(Error::Json)?;
    let req = build(
        path,
        Request::new(path).create(&PostParams::default(), body),
    )?;
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(&format!("POST {path}"), e)),
    }
}

#[derive(Deserialize)]
pub(super) struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
pub(super) struct ListHead {
    metadata: ListMeta,
}

pub(super) async fn current_rv(client: &Client, path: &str) -> Result<String, Error> {
    let req = build(
        "list",
        Request::new(path).list(&ListParams::default().limit(1)),
    )?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("list {path}"), e))?;
    Ok(parse::<ListHead>("list", &text)?.metadata.resource_version)
}

#[derive(Deserialize)]
pub(super) struct CreatedStatus {
    phase: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Created {
    status: Option<CreatedStatus>,
}

/// Creates every object, `concurrency` in flight. Returns the results, when each create
/// was acknowledged (by `namespace/name`), and when the first was sent.
pub(super) async fn create_all(
    client: &Client,
    target: Target,
    objects: &[Obj],
    concurrency: usize,
) -> (CreateResult, HashMap<String, Instant>, Instant) {
    let first_sent = Instant::now();
    let outcomes: Vec<(String, Duration, Instant, Result<String, String>)> =
        futures::stream::iter(objects)
            .map(|o| {
                let path = format!("{}/namespaces/{}/coredumps", base(target), o.namespace);
                let req = Request::new(path).create(&PostParams::default(), o.body.clone());
                let key = format!("{}/{}", o.namespace, o.name);
                async move {
                    let sent = Instant::now();
                    let res = match req {
                        Ok(req) => client.request_text(req).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let acked = Instant::now();
                    (key, acked - sent, acked, res)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let total = outcomes
        .iter()
        .map(|(_, _, acked, _)| *acked)
        .max()
        .map_or(Duration::ZERO, |last| last - first_sent);

    let mut r = CreateResult {
        attempted: objects.len(),
        total,
        ..Default::default()
    };
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut acks = HashMap::with_capacity(outcomes.len());
    for (key, latency, acked, res) in outcomes {
        match res {
            Ok(text) => {
                r.succeeded += 1;
                latencies.push(latency);
                acks.insert(key, acked);
                let phase = serde_json::from_str::<Created>(&text)
                    .ok()
                    .and_then(|c| c.status?.phase)
                    .unwrap_or_else(|| "(none)".to_string());
                *r.phases.entry(phase).or_default() += 1;
            }
            Err(e) => {
                r.first_error.get_or_insert(format!("{key}: {e}"));
            }
        }
    }
    r.per_s = per_s(r.succeeded, total);
    r.p50 = percentile(&latencies, 50.0);
    r.p99 = percentile(&latencies, 99.0);
    (r, acks, first_sent)
}

pub(super) fn per_s(n: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s == 0.0 {
        return f64::INFINITY;
    }
    n as f64 / s
}

#[derive(Deserialize)]
pub(super) struct Items {
    items: Vec<serde::de::IgnoredAny>,
}

/// `repeats` full lists (no `limit`, so one response each), timed to the last byte.
pub(super) async fn list(
    client: &Client,
    path: &str,
    label: Option<&str>,
    expected: usize,
    repeats: usize,
) -> ListResult {
    let mut r = ListResult {
        expected,
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut lp = ListParams::default();
    if let Some(l) = label {
        lp = lp.labels(l);
    }
    for i in 0..repeats.max(1) {
        let req = match Request::new(path).list(&lp) {
            Ok(req) => req,
            Err(e) => {
                r.error = Some(e.to_string());
                break;
            }
        };
        let t = Instant::now();
        let res = client.request_text(req).await;
        let took = t.elapsed();
        let counted = res.map_err(|e| e.to_string()).and_then(|text| {
            let n = serde_json::from_str::<Items>(&text)
                .map_err(|e| e.to_string())?
                .items
                .len();
            Ok((n, text.len()))
        });
        match counted {
            Ok((n, bytes)) => {
                if i == 0 {
                    r.returned = n;
                    r.bytes = bytes;
                } else if n != r.returned {
                    r.error
                        .get_or_insert(format!("repeat {i} returned {n}, not {}", r.returned));
                }
                times.push(took);
            }
            Err(e) => {
                r.error.get_or_insert(format!("list {path}: {e}"));
                break;
            }
        }
    }
    r.median = percentile(&times, 50.0);
    r.slowest = percentile(&times, 100.0);
    r.per_s = per_s(r.returned, r.median);
    r
}

#[derive(Clone, Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

/// Just the metadata of a watched object: the client's decoding stays small.
#[derive(Clone, Deserialize)]
pub(super) struct Named {
    metadata: Meta,
}

pub(super) struct WatchLog {
    received: HashMap<String, Instant>,
    error: Option<String>,
}

/// Watches `path` from `rv`, noting when the ADDED event of each object in a namespace
/// starting with `prefix` arrived, until `want` arrived, an error, or `stop`. A watch the
/// server ends (its timeout) is resumed from the last revision seen.
pub(super) async fn watch_adds(
    client: Client,
    path: String,
    mut rv: String,
    prefix: String,
    want: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> WatchLog {
    let mut log = WatchLog {
        received: HashMap::with_capacity(want),
        error: None,
    };
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_S);
    'watch: while log.received.len() < want {
        let req = match Request::new(&path).watch(&wp, &rv) {
            Ok(r) => r,
            Err(e) => {
                log.error = Some(e.to_string());
                break;
            }
        };
        let stream = match client.request_events::<Named>(req).await {
            Ok(s) => s,
            Err(e) => {
                log.error = Some(format!("watch {path}: {e}"));
                break;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = &mut stop => break 'watch,
                ev = stream.next() => ev,
            };
            match ev {
                // Ended by the server: resume where it stopped.
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'watch;
                }
                Some(Ok(WatchEvent::Added(o))) => {
                    let at = Instant::now();
                    rv = o.metadata.resource_version;
                    if o.metadata.namespace.starts_with(&prefix) {
                        let key = format!("{}/{}", o.metadata.namespace, o.metadata.name);
                        log.received.entry(key).or_insert(at);
                        if log.received.len() >= want {
                            break 'watch;
                        }
                    }
                }
                Some(Ok(WatchEvent::Modified(o) | WatchEvent::Deleted(o))) => {
                    rv = o.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(s))) => {
                    log.error = Some(format!("watch {path}: {} ({})", s.message, s.code));
                    break 'watch;
                }
                Some(Err(e)) => {
                    log.error = Some(format!("watch {path}: {e}"));
                    break 'watch;
                }
            }
        }
    }
    log
}

pub(super) fn watch_result(
    log: &WatchLog,
    acks: &HashMap<String, Instant>,
    first_sent: Instant,
    expected: usize,
) -> WatchResult {
    let lags: Vec<Duration> = log
        .received
        .iter()
        .filter_map(|(k, at)| Some(at.saturating_duration_since(*acks.get(k)?)))
        .collect();
    let to_last_event = log.received.values().max().map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(first_sent)
    });
    WatchResult {
        expected,
        received: log.received.len(),
        to_last_event,
        per_s: per_s(log.received.len(), to_last_event),
        lag_p50: percentile(&lags, 50.0),
        lag_p99: percentile(&lags, 99.0),
        error: log.error.clone(),
    }
}

/// Deletes this target's Coredumps namespace by namespace and waits until none is left.
pub(super) async fn cleanup(
    client: &Client,
    target: Target,
    namespaces: &[String],
    objects: usize,
) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = futures::stream::iter(namespaces)
        .map(|ns| async move {
            let path = format!("{}/namespaces/{ns}/coredumps", base(target));
            let req = build(
                &path,
                Request::new(&path)
                    .delete_collection(&DeleteParams::default(), &ListParams::default()),
            )?;
            client
                .request_text(req)
                .await
                .map(|_| ())
                .map_err(|e| kube_err(&format!("delete {path}"), e))
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), Error>>()?;
    let all = format!("{}/coredumps", base(target));
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(objects as u64 * 20);
    loop {
        let req = build(
            "list",
            Request::new(&all).list(&ListParams::default().limit(1)),
        )?;
        let left = client
            .request_text(req)
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<Items>(&t)
                    .map(|i| i.items.len())
                    .map_err(|e| e.to_string())
            });
        let last = match left {
            Ok(0) => return Ok(()),
            Ok(n) => format!("{n} left"),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("the Coredumps of {} to be deleted", target.name()),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
