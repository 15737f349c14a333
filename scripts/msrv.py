"""The MSRV check of the README's test command: the `rust-version` the workspace declares must be
at least every normal (non-dev) dependency's own `rust-version`, and no std item newer than it may
be used (clippy's incompatible_msrv lint, when clippy is installed). Only one toolchain can be
installed on these machines, so building with the declared version itself is not possible here."""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


# The dependencies built on the machines FlashCore runs on (Linux x86_64), not wasm or Windows ones.
meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked",
                                  "--filter-platform", "x86_64-unknown-linux-gnu"],
                                 check=True, capture_output=True, text=True).stdout)
packages = {p["id"]: p for p in meta["packages"]}
members = set(meta["workspace_members"])
declared = {packages[m]["rust_version"] for m in members}
if len(declared) != 1 or None in declared:
    sys.exit(f"msrv: every workspace crate declares the same rust-version, got {sorted(map(str, declared))}")
msrv = declared.pop()
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
# Normal dependencies reachable from the workspace crates (build and proc-macro ones included).
seen, todo = set(), list(members)
while todo:
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]) and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
too_new = [(packages[d]["name"], packages[d]["version"], packages[d]["rust_version"])
           for d in sorted(seen - members)
           if packages[d]["rust_version"] and version(packages[d]["rust_version"]) > version(msrv)]
if too_new:
    sys.exit(f"msrv: the workspace declares rust-version {msrv}, but these dependencies need more: {too_new}")
print(f"msrv: rust-version {msrv}; {len(seen - members)} normal dependencies, none needs a newer Rust")
if subprocess.run(["cargo", "clippy", "--version"], capture_output=True).returncode != 0:
    print("msrv: clippy is not installed, so std items newer than the MSRV are not checked")
    sys.exit(0)
lint = subprocess.run(["cargo", "clippy", "--workspace", "--all-targets", "--quiet", "--",
                       "-A", "clippy::all", "-D", "clippy::incompatible_msrv"], capture_output=True, text=True)
if lint.returncode != 0:
    sys.exit(f"msrv: std items newer than rust-version {msrv}:\n{lint.stderr}")
print(f"msrv: no std item newer than {msrv} (clippy::incompatible_msrv)")
