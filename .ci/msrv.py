#!/usr/bin/env python3
"""MSRV check: the workspace's declared rust-version must be at least every dependency's.

`cargo +VERSION` is not available on these machines, so the check reads what each
package in the resolved graph (Cargo.lock) declares, from `cargo metadata`, and fails
when one needs a newer Rust than the workspace says. Prints the ten highest."""
import json
import subprocess
import sys


def key(v):
    return tuple(int(p) for p in (v.split(".") + ["0", "0"])[:3])


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
members = set(meta["workspace_members"])
# Only packages in the build graph (not every version the lock file knows).
in_graph = {n["id"] for n in meta["resolve"]["nodes"]}
declared = {
    p["name"]: p.get("rust_version") for p in meta["packages"] if p["id"] in members
}
missing = [n for n, v in declared.items() if not v]
if missing:
    sys.exit(f"msrv: crates without rust-version (inherit the workspace's): {missing}")
ours = min(declared.values(), key=key)
deps = sorted(
    (
        (p["rust_version"], p["name"], p["version"])
        for p in meta["packages"]
        if p["id"] in in_graph and p["id"] not in members and p.get("rust_version")
    ),
    key=lambda t: key(t[0]),
    reverse=True,
)
for v, n, ver in deps[:10]:
    print(f"  {n} {ver}: rust-version {v}")
too_new = [(v, n, ver) for v, n, ver in deps if key(v) > key(ours)]
if too_new:
    sys.exit(
        f"msrv: the workspace declares rust-version {ours}, but "
        + ", ".join(f"{n} {ver} needs {v}" for v, n, ver in too_new)
    )
print(f"msrv: rust-version {ours} covers every dependency")
