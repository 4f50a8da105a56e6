//! The newcomer's path, as the README gives it: `make up` (control plane, add-on and the
//! node agent for this machine), `make demo` twice, then `make down` — through the real
//! `coredump-dev` binary the Makefile runs, from a private directory standing in for the
//! repository (its `.local/`). What the demo reports is checked independently here with
//! kubectl, and every shell example of README.md is run as written against it: those
//! without placeholders on the fresh `make up`, then all of them after the demo with its
//! namespace and coredump for `NS` and `NAME`.
//!
//! Root only (the agent installs core_pattern); skips with a reason otherwise.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root for core_pattern and cgroups");
        return false;
    }
    if coredump_integration::agent::cgroup2_root().is_none() {
        eprintln!("skipping: no cgroup v2 hierarchy");
        return false;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipping: gcc is not installed (the demo compiles its crasher)");
        return false;
    }
    true
}

fn core_pattern() -> String {
    std::fs::read_to_string(CORE_PATTERN)
        .expect("read core_pattern")
        .trim_end()
        .to_string()
}

/// `coredump-dev` run from `root` as `make` runs it from the repository: state in
/// `root/.local`.
fn dev(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coredump-dev"))
        .current_dir(root)
        .arg("--dir=.local")
        .args(args)
        .output()
        .expect("run coredump-dev")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `down` however the test ends, so no control plane or agent outlives it (holds the
/// root `dev` runs from).
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let o = dev(&self.0, &["down"]);
        eprintln!("down: {}", text(&o));
    }
}

fn pids(dir: &Path) -> Vec<u32> {
    fn walk(d: &Path, out: &mut Vec<u32>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    out.push(pid);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn make_up_then_demo_twice_then_down() {
    if !can_run() {
        return;
    }
    let before = core_pattern();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let dir = root.join(".local");
    let readme = readme_examples();

    let up = dev(&root, &["up"]);
    let _down = Down(root.clone());
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout);
    assert!(out.contains("The node agent serves node"), "{out}");
    assert!(
        core_pattern().contains(" capture "),
        "the agent's handler is installed: {}",
        core_pattern()
    );
    let running = pids(&dir);
    assert_eq!(
        running.len(),
        5,
        "etcd, kube-apiserver, controller-manager, server, agent: {running:?}"
    );

    // The README's examples on the fresh environment: those it can run as written.
    run_examples(&root, &readme, None);

    let again = dev(&root, &["up"]);
    assert!(
        !again.status.success(),
        "a second up must refuse: {}",
        text(&again)
    );
    assert!(text(&again).contains("make down"), "{}", text(&again));

    let mut reported = Vec::new();
    for _ in 0..2 {
        let demo = dev(&root, &["demo"]);
        assert!(demo.status.success(), "{}", text(&demo));
        let out = String::from_utf8_lossy(&demo.stdout).into_owned();
        eprintln!("{out}");
        let name = out
            .split("coredump ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the demo names its coredump")
            .to_string();
        assert!(out.contains(&format!("coredumps/{name}/download")), "{out}");
        reported.push(name);
    }
    assert_ne!(reported[0], reported[1], "each run is a new crash");
    // All of them now, the demo's namespace and latest coredump for the placeholders.
    run_examples(
        &root,
        &readme,
        Some(&[("NS", "demo"), ("NAME", reported[1].as_str())]),
    );

    // What a newcomer would see, with the kubectl and kubeconfig `up` left behind.
    let kubectl = |args: &[&str]| -> Output {
        Command::new(dir.join("bin/kubectl"))
            .arg(format!("--kubeconfig={}", dir.join("kubeconfig").display()))
            .args(args)
            .output()
            .expect("kubectl")
    };
    // The README's downloads (the last in pieces) wrote `core`: it is that coredump's core.
    if let Ok(core) = std::fs::read(root.join("core")) {
        let sha = kubectl(&[
            "get",
            "cdump",
            &reported[1],
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.sha256}",
        ]);
        assert_eq!(
            hex::encode(Sha256::digest(&core)),
            String::from_utf8_lossy(&sha.stdout),
            "the README's download examples fetched {} bytes",
            core.len()
        );
    }
    let list = kubectl(&["get", "coredumps", "-n", "demo", "-o", "json"]);
    assert!(list.status.success(), "{}", text(&list));
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{items:#?}");
    for cd in items {
        let name = cd["metadata"]["name"].as_str().expect("name");
        assert!(
            reported.iter().any(|r| r == name),
            "{name} not in {reported:?}"
        );
        assert_eq!(cd["status"]["phase"], "Stored");
        assert_eq!(cd["spec"]["podName"], "crasher");
        assert_eq!(cd["spec"]["containerName"], "app");
        assert_eq!(cd["spec"]["signalName"], "SIGSEGV");
        // Why it crashed, read on the node before upload (#14).
        assert_eq!(
            cd["spec"]["analysis"]["signature"], "crash_here_in_known_function",
            "{}",
            cd["spec"]["analysis"]
        );
        assert_eq!(cd["spec"]["analysis"]["cause"], "NullPointerDereference");
        let core = kubectl(&[
            "get",
            "--raw",
            &format!("/apis/coredump.io/v1alpha1/namespaces/demo/coredumps/{name}/download"),
        ]);
        assert!(core.status.success(), "{}", text(&core));
        assert_eq!(
            hex::encode(Sha256::digest(&core.stdout)),
            cd["spec"]["sha256"],
            "{name}"
        );
    }
    // `kubectl get coredumps -n demo` shows the function and cause without a download,
    // and the demo's crashes are one group.
    let table = kubectl(&["get", "coredumps", "-n", "demo"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("crash_here_in_known_function") && table.contains("NullPointerDereference"),
        "{table}"
    );
    let groups = kubectl(&["get", "crashgroups", "-n", "demo", "-o", "json"]);
    let groups: Value = serde_json::from_slice(&groups.stdout).expect("json");
    let groups = groups["items"].as_array().expect("items");
    assert_eq!(groups.len(), 1, "{groups:#?}");
    assert_eq!(groups[0]["status"]["count"], 2);
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        "demo",
        "--field-selector",
        "reason=CoreDumped",
        "-o",
        "json",
    ]);
    let events: Value = serde_json::from_slice(&events.stdout).expect("events json");
    let messages: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    for name in &reported {
        assert!(
            messages.iter().any(|m| m.contains(name.as_str())),
            "no CoreDumped event for {name}: {messages:?}"
        );
    }

    let down = dev(&root, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(core_pattern(), before, "down restores core_pattern");
    let left: Vec<u32> = running.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
}

/// One shell command of a README code block (several lines for a loop or a continued
/// line), as written.
#[derive(Clone, Debug)]
struct Example {
    /// Line of README.md it starts on.
    line: usize,
    text: String,
}

/// The commands of one ```sh block; they share a shell (variables carry over), as do the
/// blocks after it.
#[derive(Clone, Debug)]
struct Block {
    line: usize,
    commands: Vec<Example>,
}

/// The shell examples of README.md, read when the test runs: the commands of every
/// ```sh/```bash block, without comment lines and without the `make …` lines (the test
/// is what runs those).
fn readme_examples() -> Vec<Block> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    parse_blocks(&readme)
}

fn parse_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // Inside a fence: Some(block) for a shell block, None for another language.
    let mut fence: Option<Option<Block>> = None;
    let mut pending: Option<Example> = None;
    for (i, raw) in readme.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        let Some(inside) = &mut fence else {
            if let Some(lang) = trimmed.strip_prefix("```") {
                let shell = matches!(lang.trim(), "sh" | "bash" | "shell");
                fence = Some(shell.then(|| Block {
                    line,
                    commands: Vec::new(),
                }));
            }
            continue;
        };
        if trimmed.starts_with("```") {
            if let Some(p) = &pending {
                panic!("README.md:{}: unterminated command {:?}", p.line, p.text);
            }
            if let Some(block) = inside.take() {
                blocks.push(block);
            }
            fence = None;
            continue;
        }
        let Some(block) = inside else { continue };
        match &mut pending {
            Some(p) => {
                p.text.push('\n');
                p.text.push_str(raw);
            }
            None => {
                if trimmed.is_empty()
                    || trimmed.starts_with('#')
                    || trimmed == "make"
                    || trimmed.starts_with("make ")
                {
                    continue;
                }
                pending = Some(Example {
                    line,
                    text: raw.to_string(),
                });
            }
        }
        if pending.as_ref().is_some_and(|p| complete(&p.text)) {
            block.commands.extend(pending.take());
        }
    }
    assert!(fence.is_none(), "README.md: a code fence is not closed");
    blocks
}

/// Whether `text` is a whole shell command (a loop's last line, no continuation pending):
/// bash's own parser decides.
fn complete(text: &str) -> bool {
    if text.trim_end().ends_with('\\') {
        return false;
    }
    Command::new("bash")
        .args(["-n", "-c", text])
        .stderr(Stdio::null())
        .status()
        .expect("run bash -n")
        .success()
}

/// The placeholders of a command (`NS`, `NAME`: upper-case words that are neither shell
/// variables nor assignments), outside its comments.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        for (start, word) in words(code) {
            if is_placeholder(code, start, word) && !found.iter().any(|f| f == word) {
                found.push(word.to_string());
            }
        }
    }
    found
}

/// The maximal runs of `[A-Za-z0-9_]` in `s`, with their byte offsets.
fn words(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain([(s.len(), ' ')]) {
        let word_char = c.is_ascii_alphanumeric() || c == '_';
        match (start, word_char) {
            (None, true) => start = Some(i),
            (Some(b), false) => {
                out.push((b, &s[b..i]));
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn is_placeholder(s: &str, start: usize, word: &str) -> bool {
    let before = &s[..start];
    let after = &s[start + word.len()..];
    word.len() >= 2
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !before.ends_with('$')
        && !before.ends_with("${")
        && !after.starts_with('=')
}

/// `text` with each placeholder in `subs` replaced by its value.
fn fill(text: &str, subs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mut last = 0;
        for (start, word) in words(line) {
            if let Some((_, value)) = subs.iter().find(|(k, _)| *k == word) {
                if is_placeholder(line, start, word) {
                    out.push_str(&line[last..start]);
                    out.push_str(value);
                    last = start + word.len();
                }
            }
        }
        out.push_str(&line[last..]);
    }
    out
}

/// What the README says a command does: a comment naming `Forbidden` means it must be
/// refused, anything else must succeed.
fn expects_forbidden(text: &str) -> bool {
    text.lines()
        .any(|l| l.find(" #").is_some_and(|i| l[i..].contains("Forbidden")))
}

/// Runs the README's examples with bash from `root` (the directory `make up` ran in), all
/// in one shell as a reader pasting them would, each command's status and output kept
/// apart. Without `subs`, blocks with placeholders are left out; with them, placeholders
/// are filled in and blocks with any other placeholder left out. Each command must exit 0,
/// or fail with Forbidden where its comment says so.
fn run_examples(root: &Path, blocks: &[Block], subs: Option<&[(&str, &str)]>) {
    let out_dir = root.join(format!("readme-{}", subs.map_or("fresh", |_| "demo")));
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let mut script = String::new();
    let mut ran = Vec::new();
    for block in blocks {
        let commands: Vec<Example> = block
            .commands
            .iter()
            .map(|c| Example {
                line: c.line,
                text: fill(&c.text, subs.unwrap_or(&[])),
            })
            .collect();
        let mut left: Vec<String> = commands
            .iter()
            .flat_map(|c| placeholders(&c.text))
            .collect();
        left.sort();
        left.dedup();
        if !left.is_empty() {
            eprintln!(
                "README.md:{}: block left out ({}placeholders {left:?})",
                block.line,
                if subs.is_some() { "unknown " } else { "" }
            );
            continue;
        }
        for c in commands {
            let k = ran.len();
            let d = out_dir.display();
            script.push_str(&format!(
                "{{\n{}\n}} >'{d}/{k}.out' 2>'{d}/{k}.err' </dev/null\necho $? >'{d}/{k}.rc'\n",
                c.text
            ));
            ran.push(c);
        }
    }
    assert!(!ran.is_empty(), "no README example to run");
    let out = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .current_dir(root)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run bash");
    eprintln!("README examples: {}", text(&out));
    let mut failures = Vec::new();
    for (k, c) in ran.iter().enumerate() {
        let read = |ext: &str| {
            std::fs::read_to_string(out_dir.join(format!("{k}.{ext}"))).unwrap_or_default()
        };
        let rc = read("rc");
        let (stdout, stderr) = (read("out"), read("err"));
        let forbidden = expects_forbidden(&c.text);
        // The first lines of its output.
        let head: Vec<&str> = stdout.lines().take(8).collect();
        eprintln!(
            "README.md:{} $ {}\n-> exit {}\n{}",
            c.line,
            c.text,
            rc.trim(),
            head.join("\n")
        );
        let ok = match rc.trim() {
            "0" => !forbidden,
            "" => false,
            _ => forbidden && stderr.contains("Forbidden"),
        };
        if !ok {
            failures.push(format!(
                "README.md:{}: `{}` exited {:?} ({}):\n{stderr}",
                c.line,
                c.text,
                rc.trim(),
                if forbidden {
                    "expected: refused with Forbidden"
                } else {
                    "expected: 0"
                }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What the README promises about the token users is among what ran.
    assert!(
        ran.iter()
            .any(|c| c.text.contains("--context alice") && !expects_forbidden(&c.text)),
        "no README example where alice is allowed: {ran:#?}"
    );
    assert!(
        ran.iter().any(|c| expects_forbidden(&c.text)),
        "no README example showing a Forbidden: {ran:#?}"
    );
}

#[test]
fn readme_examples_are_parsed_as_commands() {
    let blocks = parse_blocks(
        "x\n```sh\nmake up   # start\n# a comment\n\nexport A=$PWD/b\nkubectl get cdump NAME -n NS \\\n  -o yaml\n\
         : > core; off=0\nwhile [ \"$off\" -lt \"$SIZE\" ]; do\n  off=1\ndone\n```\n\
         ```text\nnot shell\n```\n```sh\nkubectl --context alice get cores -n b   # Forbidden: b is bob's\n```\n",
    );
    let texts: Vec<Vec<&str>> = blocks
        .iter()
        .map(|b| b.commands.iter().map(|c| c.text.as_str()).collect())
        .collect();
    assert_eq!(
        texts,
        [
            vec![
                "export A=$PWD/b",
                "kubectl get cdump NAME -n NS \\\n  -o yaml",
                ": > core; off=0",
                "while [ \"$off\" -lt \"$SIZE\" ]; do\n  off=1\ndone",
            ],
            vec!["kubectl --context alice get cores -n b   # Forbidden: b is bob's"],
        ]
    );
    assert_eq!(blocks[0].commands[1].line, 7);
    assert_eq!(placeholders(texts[0][0]), Vec::<String>::new());
    assert_eq!(placeholders(texts[0][1]), ["NAME", "NS"]);
    assert_eq!(placeholders(texts[0][3]), Vec::<String>::new());
    assert_eq!(
        placeholders("P=/x/NS/y/NAME/d   # NODE in a comment"),
        ["NS", "NAME"]
    );
    assert_eq!(
        fill(texts[0][1], &[("NS", "demo"), ("NAME", "cd-1")]),
        "kubectl get cdump cd-1 -n demo \\\n  -o yaml"
    );
    assert!(expects_forbidden(texts[1][0]));
    assert!(!expects_forbidden(texts[0][1]));
}
