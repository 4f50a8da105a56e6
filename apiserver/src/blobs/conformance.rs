//! The behaviour every [`BlobStore`] must have (the invariants of the module docs), as one
//! suite each implementation runs: `fs.rs` on a temporary directory, `object.rs` on
//! object_store's in-memory store (and the integration tests on a real S3 server).

use bytes::Bytes;
use futures::TryStreamExt;

use super::{BlobError, BlobKey, BlobStore};

pub fn key(name: &str) -> BlobKey {
    BlobKey {
        namespace: "ns".into(),
        name: name.into(),
        uid: "0b6f3c6e-1111-4222-8333-944455556666".into(),
    }
}

async fn read_all(
    blobs: &dyn BlobStore,
    k: &BlobKey,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let chunks: Vec<Bytes> = blobs
        .read(k, range)
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("stream");
    chunks.concat()
}

async fn store(blobs: &dyn BlobStore, k: &BlobKey, data: &[u8], chunk: usize) {
    let mut w = blobs.create(k).await.expect("create");
    for c in data.chunks(chunk.max(1)) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
    w.commit(data.len() as u64).await.expect("commit");
}

fn listed(keys: &[super::BlobEntry]) -> Vec<BlobKey> {
    keys.iter().map(|e| e.key.clone()).collect()
}

/// Runs the suite on an empty store. `big` bytes are written once in small chunks (pick
/// more than one part of a multipart backend).
pub async fn run_with(blobs: &dyn BlobStore, big: usize) {
    invisible_until_committed(blobs).await;
    never_replaces(blobs).await;
    big_writers(blobs, big).await;
    length_is_checked(blobs).await;
    ranged_reads(blobs, big).await;
    listing_and_delete(blobs).await;
    bad_keys(blobs).await;
    assert!(
        blobs.list().await.expect("list").is_empty(),
        "the suite leaves the store empty"
    );
}

pub async fn run(blobs: &dyn BlobStore) {
    run_with(blobs, 3 << 20).await;
}

async fn invisible_until_committed(blobs: &dyn BlobStore) {
    let k = key("a");
    let mut w = blobs.create(&k).await.expect("create");
    w.write(Bytes::from_static(b"partial"))
        .await
        .expect("write");
    assert!(matches!(
        blobs.read(&k, None).await,
        Err(BlobError::NotFound(_))
    ));
    assert!(matches!(blobs.size(&k).await, Err(BlobError::NotFound(_))));
    assert!(blobs.list().await.expect("list").is_empty());
    w.abort().await;
    assert!(
        blobs.list().await.expect("list").is_empty(),
        "aborted: nothing"
    );

    let mut w = blobs.create(&k).await.expect("create");
    w.write(Bytes::from_static(b"partial"))
        .await
        .expect("write");
    drop(w);
    assert!(
        blobs.list().await.expect("list").is_empty(),
        "dropped: nothing"
    );
    assert!(matches!(
        blobs.read(&k, None).await,
        Err(BlobError::NotFound(_))
    ));

    store(blobs, &k, b"whole core", 3).await;
    assert_eq!(read_all(blobs, &k, None).await, b"whole core");
    assert_eq!(blobs.size(&k).await.expect("size"), 10);
    assert_eq!(
        listed(&blobs.list().await.expect("list")),
        std::slice::from_ref(&k)
    );
    blobs.delete(&k).await.expect("delete");
    blobs.delete(&k).await.expect("delete twice is fine");
    assert!(matches!(
        blobs.read(&k, None).await,
        Err(BlobError::NotFound(_))
    ));
}

async fn never_replaces(blobs: &dyn BlobStore) {
    let k = key("b");
    store(blobs, &k, b"first core", 4).await;
    let mut w = blobs.create(&k).await.expect("create");
    w.write(Bytes::from_static(b"other")).await.expect("write");
    assert!(matches!(w.commit(5).await, Err(BlobError::Exists(_))));
    assert_eq!(
        read_all(blobs, &k, None).await,
        b"first core",
        "the first core is intact"
    );
    // Two writers open at once: the first commit wins, the second is refused.
    let mut w1 = blobs.create(&key("c")).await.expect("create");
    let mut w2 = blobs.create(&key("c")).await.expect("create");
    w1.write(Bytes::from_static(b"one")).await.expect("write");
    w2.write(Bytes::from_static(b"two")).await.expect("write");
    w1.commit(3).await.expect("commit");
    assert!(matches!(w2.commit(3).await, Err(BlobError::Exists(_))));
    assert_eq!(read_all(blobs, &key("c"), None).await, b"one");
    blobs.delete(&k).await.expect("delete");
    blobs.delete(&key("c")).await.expect("delete");
}

/// Writers of more than one part (multipart on object storage): refused over a stored
/// blob, and nothing visible when dropped or aborted midway.
async fn big_writers(blobs: &dyn BlobStore, big: usize) {
    let k = key("h");
    let chunk = Bytes::from(vec![7u8; 64 << 10]);
    let write_big = |mut w: Box<dyn super::BlobWriter>| {
        let chunk = chunk.clone();
        async move {
            let mut n = 0;
            while n < big {
                w.write(chunk.clone()).await.expect("write");
                n += chunk.len();
            }
            (w, n as u64)
        }
    };
    let (w, _) = write_big(blobs.create(&k).await.expect("create")).await;
    drop(w);
    let (w, _) = write_big(blobs.create(&k).await.expect("create")).await;
    w.abort().await;
    assert!(
        blobs.list().await.expect("list").is_empty(),
        "dropped, aborted: nothing"
    );
    store(blobs, &k, b"small", 2).await;
    let (w, n) = write_big(blobs.create(&k).await.expect("create")).await;
    assert!(matches!(w.commit(n).await, Err(BlobError::Exists(_))));
    assert_eq!(
        read_all(blobs, &k, None).await,
        b"small",
        "the stored core is intact"
    );
    blobs.delete(&k).await.expect("delete");
}

async fn length_is_checked(blobs: &dyn BlobStore) {
    let k = key("d");
    let mut w = blobs.create(&k).await.expect("create");
    w.write(Bytes::from_static(b"short")).await.expect("write");
    assert!(matches!(w.commit(6).await, Err(BlobError::Length { .. })));
    assert!(
        blobs.list().await.expect("list").is_empty(),
        "a refused commit keeps nothing"
    );
}

async fn ranged_reads(blobs: &dyn BlobStore, big: usize) {
    let k = key("e");
    let data: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
    store(blobs, &k, &data, 64 << 10).await;
    assert_eq!(blobs.size(&k).await.expect("size"), big as u64);
    assert!(read_all(blobs, &k, None).await == data, "whole");
    let n = big as u64;
    for r in [
        0..1,
        0..n,
        1..n,
        5..1000,
        n - 1..n,
        n / 2..n / 2 + (1 << 20),
        0..n + 10,
    ] {
        let want = &data[r.start as usize..(r.end.min(n)) as usize];
        assert!(read_all(blobs, &k, Some(r.clone())).await == want, "{r:?}");
    }
    blobs.delete(&k).await.expect("delete");
}

async fn listing_and_delete(blobs: &dyn BlobStore) {
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    let other = BlobKey {
        namespace: "other-ns".into(),
        ..key("f")
    };
    store(blobs, &key("g"), b"g", 1).await;
    store(blobs, &other, b"f", 1).await;
    let list = blobs.list().await.expect("list");
    assert_eq!(listed(&list), [key("g"), other.clone()]);
    assert!(list.iter().all(|e| e.modified >= before), "{list:?}");
    blobs.delete(&other).await.expect("delete");
    blobs.delete(&key("g")).await.expect("delete");
}

async fn bad_keys(blobs: &dyn BlobStore) {
    for bad in ["../x", "a/b", ".hidden", "", "under_score", "UPPER"] {
        assert!(
            matches!(blobs.create(&key(bad)).await, Err(BlobError::BadKey(_))),
            "{bad}"
        );
        assert!(matches!(
            blobs.read(&key(bad), None).await,
            Err(BlobError::BadKey(_))
        ));
        assert!(matches!(
            blobs.delete(&key(bad)).await,
            Err(BlobError::BadKey(_))
        ));
    }
}
