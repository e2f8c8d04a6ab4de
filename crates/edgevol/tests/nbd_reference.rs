//! The NBD reference project's own client test tool, `nbd-tester-client`,
//! against the daemon: an old-style client (`NBD_OPT_EXPORT_NAME`, simple
//! replies, requests at any alignment and up to 42 MB).
//!
//! The tool is not packaged in Debian, so this test is `#[ignore]`d and
//! needs a binary built by hand from the upstream sources (tests/run in
//! the NBD repository), with `integrity-test.tr` and
//! `integrityhuge-test.tr` beside it:
//!
//! ```text
//! EDGEVOL_NBD_TESTER=/path/to/nbd-tester-client \
//!     cargo test -p edgevol --test nbd_reference -- --ignored
//! ```
//!
//! What it covers is also covered by the project's own tests in
//! nbd_unaligned.rs, which run in CI.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

/// The tester's runs (name, arguments), as its upstream test suite calls
/// them; each gets a fresh volume (the integrity traces expect zeroes).
const RUNS: &[(&str, &[&str])] = &[
    ("read", &[]),
    ("write", &["-w"]),
    ("write+flush", &["-w", "-f"]),
    ("integrity", &["-i", "-t", "integrity-test.tr"]),
    ("integrityhuge", &["-i", "-t", "integrityhuge-test.tr"]),
    ("oversize", &["-o"]),
    ("handshake", &["-h"]),
];

#[test]
#[ignore = "needs EDGEVOL_NBD_TESTER (nbd-tester-client is not packaged)"]
fn nbd_tester_client_passes() {
    let tester =
        PathBuf::from(std::env::var_os("EDGEVOL_NBD_TESTER").expect("set EDGEVOL_NBD_TESTER"));
    let dir = tester.parent().expect("the tester's directory").to_owned();
    let d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    let mut failed = Vec::new();
    for (i, (name, args)) in RUNS.iter().enumerate() {
        let vol = format!("p/t{i}");
        d.create_volume(&vol, 64 << 20);
        let mut c = Command::new(&tester);
        c.current_dir(&dir)
            .arg("-N")
            .arg(&vol)
            .arg("-u")
            .arg(&d.nbd_sock)
            .args(*args);
        match output_timeout(&mut c, Duration::from_secs(300)) {
            Some(o) if o.status.success() => eprintln!("{name}: passed"),
            Some(o) => failed.push(format!("{name}: failed\n{}", show(&o))),
            None => failed.push(format!("{name}: hung (killed after 300 s)")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    d.finish(1);
}
