//! The daemon's log is plain text where no person watches a terminal: a
//! log file, a pipe or a journal gets no ANSI colour codes, whatever TERM
//! says and without NO_COLOR (colour only at a terminal, and never with
//! NO_COLOR set).

mod support;

use std::io::Write;

use support::*;

#[test]
fn daemon_log_in_a_file_has_no_colour_codes() {
    let d = Daemon::start_with(DaemonOptions {
        env: vec![
            ("NO_COLOR".into(), None),
            ("TERM".into(), Some("xterm-256color".into())),
        ],
        ..DaemonOptions::default()
    });
    // Info lines (a pool and a volume created, a client served) ...
    d.create_pool("p", "256M", None);
    d.create_volume("p/v", 16 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x42 0 64k"]);
    // ... and a warning: a client that speaks no NBD.
    let mut s = std::os::unix::net::UnixStream::connect(&d.nbd_sock).expect("connect");
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    drop(s);
    eventually("the handshake warning is logged", || {
        let log = d.log();
        (log.contains("WARN") && log.contains("handshake"), log)
    });
    let log = std::fs::read(d.dir.path().join(format!("daemon-{}.log", d.run))).expect("log");
    let esc = log.iter().filter(|&&b| b == 0x1b).count();
    assert_eq!(
        esc,
        0,
        "{esc} ESC bytes (colour codes) in the daemon's log file:\n{}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        String::from_utf8_lossy(&log).contains(" INFO "),
        "no info line in the log"
    );
    d.finish(1);
}
