//! The real kubectl, pointed at the harness's kubeconfig.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::endpoints::Endpoints;
use crate::Error;

#[derive(Clone, Debug)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// Extra leading arguments, e.g. `--context=alice`.
    pub base_args: Vec<String>,
}

impl Kubectl {
    pub fn new(ep: &Endpoints) -> Self {
        Self {
            bin: ep.bin_dir.join("kubectl"),
            kubeconfig: ep.kubeconfig.clone(),
            base_args: Vec::new(),
        }
    }

    /// The same kubectl acting as one of the harness's token users.
    pub fn context(&self, name: &str) -> Self {
        let mut k = self.clone();
        k.base_args.push(format!("--context={name}"));
        k
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c.args(&self.base_args);
        c
    }

    /// Runs kubectl and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output, Error> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Io(format!("run kubectl {args:?}"), e))
    }

    /// Runs kubectl with `stdin` as input.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Output, Error> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("run kubectl {args:?}"), e))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin)
                .map_err(|e| Error::Io("write kubectl stdin".into(), e))?;
        }
        child
            .wait_with_output()
            .map_err(|e| Error::Io(format!("wait kubectl {args:?}"), e))
    }

    /// Runs kubectl and returns stdout; a non-zero exit is an error carrying stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String, Error> {
        check(args, self.run(args)?)
    }

    /// `kubectl get --raw` of a download `path` in `?offset=&length=` pieces of `window`
    /// bytes until `size` bytes arrived, each piece handed to `sink`: how a body larger
    /// than one request window of the aggregator is fetched.
    pub fn get_raw_in_pieces(
        &self,
        path: &str,
        size: u64,
        window: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let mut offset = 0;
        while offset < size {
            let piece = format!("{path}?offset={offset}&length={window}");
            let args = ["get", "--raw", piece.as_str()];
            let out = self.run(&args)?;
            if !out.status.success() {
                return Err(Error::Kubectl {
                    args: args.join(" "),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            if out.stdout.is_empty() {
                return Err(Error::Setup(format!(
                    "empty piece at offset {offset} of {path}"
                )));
            }
            offset += out.stdout.len() as u64;
            sink(&out.stdout);
        }
        Ok(())
    }

    /// The reasons of the Events about Coredump `ns/name` (what `kubectl describe`
    /// lists under Events), space-separated.
    pub fn coredump_event_reasons(&self, ns: &str, name: &str) -> Result<String, Error> {
        self.ok(&[
            "get",
            "events",
            "-n",
            ns,
            &format!("--field-selector=involvedObject.name={name},involvedObject.kind=Coredump"),
            "-o",
            "jsonpath={.items[*].reason}",
        ])
    }

    /// `kubectl apply -f -` of a JSON manifest (a single object or a `List`).
    pub fn apply(&self, manifest: &serde_json::Value) -> Result<String, Error> {
        let body = serde_json::to_vec(manifest).map_err(Error::Json)?;
        let args = ["apply", "-f", "-"];
        check(&args, self.run_stdin(&args, &body)?)
    }
}

fn check(args: &[&str], out: Output) -> Result<String, Error> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Kubectl {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
