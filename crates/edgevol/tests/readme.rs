//! The README's tour, run as a new user types it.
//!
//! Every `sh` block under the README's "Five-minute tour" heading runs as
//! written, in one bash script with `set -euo pipefail`: a command that
//! fails fails the test. The one substitution is the one a reader makes:
//! `cargo run --release -- ARGS` is the `edgevol` binary under test with
//! the same ARGS (started in the background, as the README says: "keep it
//! running in one terminal"). A block preceded by the comment
//! `<!-- readme-test: skip REASON -->` is skipped (it needs real drives).
//!
//! The README names fixed addresses (`127.0.0.1:10809`) and fixed paths
//! (`/tmp/a.img`): the script runs in its own network and mount namespaces
//! (`unshare --net --mount`, so it needs root, as CI has) with this test's
//! own directory bind-mounted on `/tmp`, so it runs in parallel with the
//! rest of the suite and leaves nothing behind.
//!
//! Beyond the exit codes, the outcomes the tour promises are checked in its
//! transcript: no CLI error (also on the left of `&&`, which `set -e`
//! ignores), fio verified every block, a removed mirror member shows the
//! pool DEGRADED, the grown drives are taken in, and the daemon stops
//! cleanly on Ctrl-C (SIGINT).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const README: &str = include_str!("../../../README.md");
const SKIP: &str = "<!-- readme-test: skip";

/// The `sh` blocks of the section under `heading`, less the skipped ones.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut out = Vec::new();
    let mut skip = false;
    let mut lines = section[..end].lines();
    while let Some(line) = lines.next() {
        if line.starts_with(SKIP) {
            skip = true;
        } else if line == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            if !std::mem::take(&mut skip) {
                out.push(body.join("\n"));
            }
        } else if !line.trim().is_empty() {
            skip = false;
        }
    }
    out
}

/// The daemon block (`cargo run --release -- up`) as the binary under test.
fn daemon_command(block: &str) -> String {
    let args = block
        .trim()
        .strip_prefix("cargo run --release -- ")
        .unwrap_or_else(|| panic!("the tour should start the daemon first, got {block:?}"));
    assert!(
        !args.contains('\n'),
        "the daemon block should be one command: {block:?}"
    );
    format!("edgevol {args}")
}

#[test]
fn readme_blocks_are_found() {
    let b = blocks(README, "Five-minute tour");
    assert!(
        b.len() >= 3,
        "expected the daemon, tour and redundancy blocks"
    );
    assert_eq!(daemon_command(&b[0]), "edgevol up");
    assert!(b.iter().any(|x| x.contains("snapshot rollback")));
    assert!(b.iter().any(|x| x.contains("pool replace")));
    // Skipped blocks are the ones marked, and only those.
    let marked = README.matches(SKIP).count();
    let all = README
        .split("\n## Five-minute tour\n")
        .nth(1)
        .map(|s| s.split("\n## ").next().unwrap_or(""))
        .unwrap_or("")
        .matches("```sh")
        .count();
    assert_eq!(
        all - b.len(),
        marked,
        "every skipped block carries the marker"
    );
}

fn script(bin_dir: &Path, work: &Path, blocks: &[String]) -> String {
    let daemon = daemon_command(&blocks[0]);
    let mut s = format!(
        r#"set -euo pipefail
exec 2>&1
ip link set lo up
mount --bind '{work}/tmp' /tmp
export PATH='{bin}':"$PATH"
unset EDGEVOL_API
cd '{work}'
{daemon} > daemon.log 2>&1 &
daemon=$!
for _ in $(seq 600); do
    edgevol volume get demo/vol0 >/dev/null 2>&1 && break
    kill -0 $daemon || {{ cat daemon.log; exit 1; }}
    sleep 0.1
done
set -x
"#,
        work = work.display(),
        bin = bin_dir.display(),
    );
    for b in &blocks[1..] {
        s.push_str(b);
        s.push('\n');
    }
    s.push_str(
        r#"set +x
kill -INT $daemon
wait $daemon
echo "daemon exit status $?"
"#,
    );
    s
}

#[test]
fn the_readme_tour_runs_as_written() {
    require("unshare", "util-linux");
    require("ip", "iproute2");
    fio();
    qemu_img();
    qemu_io();
    nbdinfo();
    let blocks = blocks(README, "Five-minute tour");
    // Not under /tmp: /tmp itself is replaced inside the namespace.
    let work = tempfile::Builder::new()
        .prefix("readme-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::create_dir(work.path().join("tmp")).unwrap();
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let text = script(&bin_dir, work.path(), &blocks);
    std::fs::write(work.path().join("tour.sh"), &text).unwrap();
    let out = output_timeout(
        Command::new("unshare")
            .args(["--net", "--mount", "bash"])
            .arg(work.path().join("tour.sh")),
        Duration::from_secs(900),
    )
    .expect("the README tour did not finish in 15 minutes");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default();
    let log = log.lines().rev().take(60).collect::<Vec<_>>();
    let log = log.into_iter().rev().collect::<Vec<_>>().join("\n");
    let context = format!(
        "{}\n--- transcript\n{transcript}\n--- daemon log\n{log}",
        show(&out)
    );
    assert!(
        out.status.success(),
        "a README command failed (the last one shown):\n{context}"
    );
    assert!(
        transcript.contains("daemon exit status 0"),
        "Ctrl-C did not stop the daemon cleanly:\n{context}"
    );
    // `set -e` does not stop at the left side of `a && b`: a CLI error
    // anywhere (the CLI prefixes them with `edgevol: `) fails the tour.
    let errors: Vec<&str> = transcript
        .lines()
        .filter(|l| l.starts_with("edgevol: "))
        .collect();
    assert!(errors.is_empty(), "CLI errors {errors:?} in:\n{context}");
    // The grown drives were taken in (after the resilver, the group's
    // members are all ONLINE).
    assert!(
        transcript.contains("pool m: group 0 grew by"),
        "pool online --expand took nothing in:\n{context}"
    );
    for bad in ["Pattern verification failed", "bad header", "verify:"] {
        assert!(!transcript.contains(bad), "{bad:?} in the tour:\n{context}");
    }
    // Every fio run of the tour wrote (or verified) without an error.
    for f in ["fio.txt", "w.txt", "r.txt"] {
        let r = std::fs::read_to_string(work.path().join("tmp").join(f))
            .unwrap_or_else(|e| panic!("fio's output {f}: {e}\n{context}"));
        let errors: Vec<&str> = r
            .split("err=")
            .skip(1)
            .map(|x| x.trim_start().split(':').next().unwrap_or(""))
            .collect();
        assert!(
            !errors.is_empty() && errors.iter().all(|e| *e == "0"),
            "fio {f} reported errors {errors:?}:\n{r}"
        );
    }
    // After `rm /tmp/b.img`, the very next `pool status m` shows the loss.
    let after_rm = transcript
        .split("+ sleep 2")
        .nth(1)
        .and_then(|t| t.split("+ edgevol pool status m").nth(1))
        .unwrap_or_else(|| panic!("no pool status after rm:\n{context}"));
    let status = after_rm.split("\n+ ").next().unwrap_or("");
    assert!(
        status.contains("DEGRADED"),
        "pool status right after the drive was removed:\n{status}\n{context}"
    );
}
