//! The S3 server the object-storage tests run against (versitygw, posix backend): it
//! starts with its own credentials and bucket, stores what a signed PUT sends, answers
//! whole and ranged GETs, lists by prefix, does multipart uploads (invisible until
//! completed, nothing left after an abort), refuses unsigned and wrongly signed requests,
//! and leaves no process or file behind when it drops.

use coredump_integration::process::Lifetime;
use coredump_integration::s3::{S3Server, BUCKET};

/// Reproducible bytes that do not compress to nothing.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn versitygw_stores_lists_ranges_and_uploads_in_parts() {
    let s3 = S3Server::start().expect("start versitygw");
    assert!(s3.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(s3.bucket, BUCKET);
    // The bucket was created through S3 and is a directory of the posix root.
    assert_eq!(
        s3.request("HEAD", &format!("/{BUCKET}"), &[], None)
            .expect("head bucket")
            .status,
        200
    );
    assert!(s3.root.join(BUCKET).is_dir());

    // PUT, then the object is the file <root>/<bucket>/<key>.
    let body = bytes(1 << 20, 1);
    let r = s3.put_object("cores/ns-a/one_uid.zst", &body).expect("put");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.files("cores/"), ["cores/ns-a/one_uid.zst"]);
    assert_eq!(
        std::fs::read(s3.root.join(BUCKET).join("cores/ns-a/one_uid.zst")).expect("posix file"),
        body
    );

    // Whole and ranged GETs.
    let whole = s3.get_object("cores/ns-a/one_uid.zst", None).expect("get");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, body);
    let part = s3
        .get_object("cores/ns-a/one_uid.zst", Some((1000, 1999)))
        .expect("ranged get");
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(part.body, body[1000..2000]);
    assert_eq!(
        part.header("Content-Range"),
        Some(format!("bytes 1000-1999/{}", body.len()).as_str())
    );
    assert_eq!(
        s3.get_object("cores/ns-a/missing", None)
            .expect("get")
            .status,
        404
    );

    // Listing by prefix, through S3.
    assert_eq!(
        s3.put_object("cores/ns-b/two_uid.zst", b"two")
            .expect("put")
            .status,
        200
    );
    let listed = s3.list("cores/").expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect::<Vec<_>>(),
        [
            ("cores/ns-a/one_uid.zst", body.len() as u64),
            ("cores/ns-b/two_uid.zst", 3)
        ]
    );
    assert_eq!(
        s3.keys("cores/ns-b/").expect("list"),
        ["cores/ns-b/two_uid.zst"]
    );
    assert!(s3.keys("cores/ns-c/").expect("list").is_empty());

    // Multipart: parts are invisible until completed (S3's minimum part size is 5 MiB
    // for all but the last).
    let key = "cores/ns-a/big_uid.zst";
    let (p1, p2) = (bytes(5 << 20, 2), bytes(100 << 10, 3));
    let id = s3.create_multipart_upload(key).expect("create multipart");
    let e1 = s3.upload_part(key, &id, 1, &p1).expect("part 1");
    let e2 = s3.upload_part(key, &id, 2, &p2).expect("part 2");
    assert_eq!(s3.multipart_uploads("cores/").expect("uploads"), [key]);
    assert!(!s3.keys("cores/").expect("list").contains(&key.to_string()));
    assert!(!s3.files("cores/").contains(&key.to_string()));
    let r = s3
        .complete_multipart_upload(key, &id, &[e1, e2])
        .expect("complete");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s3.multipart_uploads("cores/").expect("uploads").is_empty());
    let got = s3.get_object(key, None).expect("get");
    assert_eq!(got.body.len(), p1.len() + p2.len());
    assert!(got.body[..p1.len()] == p1[..] && got.body[p1.len()..] == p2[..]);
    // A range across the parts' boundary.
    let across = s3
        .get_object(key, Some(((5 << 20) - 10, (5 << 20) + 9)))
        .expect("ranged get");
    assert_eq!(across.status, 206);
    assert_eq!(across.body, [&p1[p1.len() - 10..], &p2[..10]].concat());

    // An aborted multipart upload leaves nothing: no upload, no object, no file.
    let cut = "cores/ns-a/cut_uid.zst";
    let id = s3.create_multipart_upload(cut).expect("create multipart");
    s3.upload_part(cut, &id, 1, &p1).expect("part 1");
    assert_eq!(s3.multipart_uploads("cores/").expect("uploads"), [cut]);
    let r = s3.abort_multipart_upload(cut, &id).expect("abort");
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(s3.multipart_uploads("cores/").expect("uploads").is_empty());
    assert!(!s3.keys("cores/").expect("list").contains(&cut.to_string()));
    assert_eq!(
        s3.files("cores/"),
        [
            "cores/ns-a/big_uid.zst",
            "cores/ns-a/one_uid.zst",
            "cores/ns-b/two_uid.zst"
        ]
    );

    // DELETE removes the object and its file.
    assert_eq!(
        s3.delete_object("cores/ns-b/two_uid.zst")
            .expect("delete")
            .status,
        204
    );
    assert!(s3.keys("cores/ns-b/").expect("list").is_empty());
    assert!(!s3
        .files("cores/")
        .contains(&"cores/ns-b/two_uid.zst".to_string()));

    // Only the server's own credentials get in.
    let anonymous = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/{BUCKET}/cores/ns-a/one_uid.zst", s3.endpoint))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "403");
    let mut wrong = s3.curl();
    wrong.cred = coredump_integration::curl::Credential::AwsSigV4 {
        region: s3.region.clone(),
        access_key: s3.access_key.clone(),
        secret_key: "not-the-secret".into(),
    };
    assert_eq!(
        wrong
            .get(&format!("/{BUCKET}/cores/ns-a/one_uid.zst"), &[])
            .expect("curl")
            .status,
        403
    );

    // Teardown: the process is gone (reaped), its directory removed.
    let pid = s3.pid().expect("pid");
    let root = s3.root.clone();
    drop(s3);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "versitygw (pid {pid}) still running after drop"
    );
    assert!(!root.exists(), "{} left behind", root.display());
}

/// Large bodies stream from a file with curl (`Curl::transfer`), signed as any request.
#[test]
fn a_large_object_streams_in_and_out_from_files() {
    let s3 = S3Server::start().expect("start versitygw");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let body = bytes(24 << 20, 4);
    std::fs::write(&src, &body).expect("write");
    let c = s3.curl();
    let path = s3.object_path("cores/ns/streamed_uid.zst");
    let up = c
        .transfer(
            "PUT",
            &path,
            &[],
            Some(&src),
            std::path::Path::new("/dev/null"),
        )
        .expect("upload");
    assert_eq!((up.status, up.uploaded), (200, body.len() as u64));
    let dst = dir.path().join("dst");
    let down = c.transfer("GET", &path, &[], None, &dst).expect("download");
    assert_eq!((down.status, down.downloaded), (200, body.len() as u64));
    assert!(std::fs::read(&dst).expect("read") == body);
}

/// `make up STORAGE=s3` starts it in the relative `.local/state/s3`: versitygw runs in that
/// directory, so the paths it is given must not be relative to it (its access log was
/// `.local/state/s3/.local/state/s3/access.log`, and it exited at once).
#[test]
fn starts_in_a_relative_directory() {
    let tmp = tempfile::tempdir_in(".").expect("tempdir here");
    let rel = tmp
        .path()
        .strip_prefix(std::env::current_dir().expect("cwd"))
        .unwrap_or(tmp.path());
    assert!(rel.is_relative(), "{}", rel.display());
    let s3 = S3Server::start_in(&rel.join("s3"), Lifetime::Scoped).expect("start versitygw");
    let body = bytes(4096, 7);
    let r = s3.put_object("cores/ns/x_uid.zst", &body).expect("put");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.files("cores/"), ["cores/ns/x_uid.zst"]);
    assert!(tmp.path().join("s3/access.log").exists());
}
