//! vhost-user-blk export management without a VM: `export add | list |
//! remove`, `serve --vhost-user`, persistence across a restart, the
//! one-frontend rule, and attachments that block `volume destroy` and
//! `export remove`. (A raw Unix connection stands in for QEMU: the daemon
//! counts a frontend as attached from the moment it accepts it.) The real
//! guest is in vm_vhost.rs.

mod support;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::*;

fn list(d: &Daemon) -> Vec<serde_json::Value> {
    d.json(&["export", "list"])
        .as_array()
        .expect("export list is an array")
        .clone()
}

fn connections(d: &Daemon, vol: &str) -> u64 {
    list(d)
        .iter()
        .find(|e| e["volume"] == vol)
        .and_then(|e| e["connections"].as_u64())
        .unwrap_or(0)
}

#[test]
fn export_add_list_remove_and_persist() {
    let mut d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/a", 64 * MIB);
    d.create_volume("p/b", 64 * MIB);
    d.ok(&["snapshot", "create", "p/a@s1"]);
    let sa = d.path("a.sock");
    let sb = d.path("b.sock");
    let ss = d.path("s.sock");
    let sa_s = sa.to_str().unwrap();

    let info = d.json(&[
        "export",
        "add",
        "p/a",
        "--vhost-user",
        sa_s,
        "--queues",
        "4",
    ]);
    assert_eq!(info["volume"], "p/a");
    assert_eq!(info["queues"], 4);
    assert_eq!(info["state"], "listening");
    assert_eq!(info["read_only"], false);
    assert_eq!(info["write_cache"], "write-back");
    let serial = info["serial"].as_str().unwrap().to_string();
    assert_eq!(
        serial.len(),
        20,
        "virtio-blk serials are 20 bytes: {serial}"
    );
    // the serial is the volume's guid
    let guid = d.json(&["volume", "get", "p/a"]);
    let guid = guid.to_string();
    assert!(
        guid.contains(&serial),
        "serial {serial} is not part of the guid in {guid}"
    );
    assert!(sa.exists(), "no socket at {}", sa.display());

    // a snapshot exports read-only with its own serial; a temporary export
    let snap = d.json(&[
        "export",
        "add",
        "p/a@s1",
        "--vhost-user",
        ss.to_str().unwrap(),
    ]);
    assert_eq!(snap["read_only"], true);
    assert_ne!(snap["serial"], info["serial"]);
    d.ok(&[
        "export",
        "add",
        "p/b",
        "--vhost-user",
        sb.to_str().unwrap(),
        "--read-only",
        "--temporary",
    ]);
    assert_eq!(list(&d).len(), 3);
    let table = d.ok(&["export", "list"]);
    assert!(
        table.contains("p/a@s1") && table.contains("ro,temporary"),
        "{table}"
    );

    // refusals: same socket, same volume, missing volume, bad queue counts
    let e = d.fail(&["export", "add", "p/b", "--vhost-user", sa_s]);
    assert!(e.contains("already exports"), "{e}");
    let e = d.fail(&[
        "export",
        "add",
        "p/a",
        "--vhost-user",
        d.path("x.sock").to_str().unwrap(),
    ]);
    assert!(e.contains("already exported"), "{e}");
    let e = d.fail(&[
        "export",
        "add",
        "p/nope",
        "--vhost-user",
        d.path("y.sock").to_str().unwrap(),
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = d.fail(&[
        "export",
        "add",
        "p/b@nope",
        "--vhost-user",
        d.path("y.sock").to_str().unwrap(),
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = d.fail(&[
        "export",
        "add",
        "p/b",
        "--vhost-user",
        d.path("z.sock").to_str().unwrap(),
        "--queues",
        "0",
    ]);
    assert!(e.contains("queues"), "{e}");
    let e = d.fail(&[
        "export",
        "add",
        "p/b",
        "--vhost-user",
        d.path("z.sock").to_str().unwrap(),
        "--workers",
        "many",
    ]);
    assert!(e.contains("workers"), "{e}");
    assert!(!d.path("y.sock").exists() && !d.path("z.sock").exists());

    // restart: the recorded exports come back, the temporary one does not
    d.stop_clean();
    assert!(!sa.exists(), "a clean stop removes the sockets");
    d.restart();
    let l = list(&d);
    let vols: Vec<&str> = l.iter().map(|e| e["volume"].as_str().unwrap()).collect();
    assert_eq!(vols.len(), 2, "{l:?}");
    assert!(vols.contains(&"p/a") && vols.contains(&"p/a@s1"), "{l:?}");
    assert!(sa.exists() && ss.exists() && !sb.exists());
    let a = l.iter().find(|e| e["volume"] == "p/a").unwrap();
    assert_eq!(a["queues"], 4);
    assert_eq!(
        a["serial"].as_str(),
        Some(serial.as_str()),
        "serial stable across restarts"
    );

    // also after kill -9: the socket file is stale, the daemon replaces it
    d.kill9();
    assert!(sa.exists());
    d.restart();
    assert_eq!(list(&d).len(), 2);
    UnixStream::connect(&sa).expect("the export listens again after kill -9");

    // remove by volume and by socket
    let r = d.json(&["export", "remove", "p/a@s1"]);
    assert_eq!(r[0]["volume"], "p/a@s1");
    assert!(!ss.exists());
    d.ok(&["export", "remove", sa_s]);
    assert!(list(&d).is_empty());
    let e = d.fail(&["export", "remove", "p/a"]);
    assert!(e.contains("no vhost-user export"), "{e}");
    d.stop_clean();
    d.restart();
    assert!(list(&d).is_empty(), "removals are recorded");
    d.finish(1);
}

#[test]
fn one_frontend_at_a_time_and_attachments_block_destroy() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", 64 * MIB);
    let sock = d.path("vm.sock");
    d.ok(&[
        "export",
        "add",
        "p/vm",
        "--vhost-user",
        sock.to_str().unwrap(),
    ]);

    let first = UnixStream::connect(&sock).unwrap();
    eventually("the first frontend is attached", || {
        let n = connections(&d, "p/vm");
        (n == 1, format!("{n} connections"))
    });
    // a second frontend is accepted and closed at once
    let mut second = UnixStream::connect(&sock).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = second
        .read(&mut buf)
        .expect("the second frontend is closed, not left hanging");
    assert_eq!(n, 0, "EOF for the second frontend");
    assert_eq!(connections(&d, "p/vm"), 1);
    let attached = d.json(&["exports"]);
    assert!(
        attached
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "p/vm" && e["transport"] == "vhost-user"),
        "{attached}"
    );

    // attached: no destroy, no remove without --force
    let e = d.fail(&["volume", "destroy", "p/vm"]);
    assert!(e.contains("attached"), "{e}");
    let e = d.fail(&["export", "remove", "p/vm"]);
    assert!(e.contains("attached"), "{e}");

    drop(first);
    eventually("the frontend detached", || {
        let n = connections(&d, "p/vm");
        (n == 0, format!("{n} connections"))
    });
    // a new frontend may attach after the first left
    let again = UnixStream::connect(&sock).unwrap();
    eventually("the next frontend is attached", || {
        let n = connections(&d, "p/vm");
        (n == 1, format!("{n} connections"))
    });
    // --force disconnects it
    d.ok(&["export", "remove", "p/vm", "--force"]);
    drop(again);
    assert!(d.json(&["exports"]).as_array().unwrap().is_empty());
    d.ok(&["volume", "destroy", "p/vm"]);
    d.finish(1);
}

#[test]
fn shared_exports_take_several_frontends() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", 64 * MIB);
    let sock = d.path("vm.sock");
    d.ok(&[
        "export",
        "add",
        "p/vm",
        "--vhost-user",
        sock.to_str().unwrap(),
        "--shared",
        "--workers",
        "shared",
    ]);
    let _a = UnixStream::connect(&sock).unwrap();
    let _b = UnixStream::connect(&sock).unwrap();
    eventually("two frontends attached", || {
        let n = connections(&d, "p/vm");
        (n == 2, format!("{n} connections"))
    });
}

#[test]
fn serve_vhost_user_flag() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", 64 * MIB);
    let mut d = d;
    d.stop_clean();
    let sock = d.path("flag.sock");
    let mut cmd = d.serve_command();
    cmd.arg("--vhost-user")
        .arg(format!("p/vm={},queues=2,read-only", sock.display()));
    let bad = {
        let mut c = d.serve_command();
        c.arg("--vhost-user").arg("p/vm");
        output(&mut c)
    };
    assert!(!bad.status.success());
    assert!(show(&bad).contains("POOL/VOL=SOCKET"), "{}", show(&bad));
    let log = d.path("flag.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    eventually("the flag's export listens", || {
        (sock.exists(), String::new())
    });
    let l = d.json(&["export", "list"]);
    assert_eq!(l[0]["volume"], "p/vm", "{l}");
    assert_eq!(l[0]["queues"], 2);
    assert_eq!(l[0]["read_only"], true);
    assert_eq!(l[0]["persistent"], false);
    sigterm(&child);
    let st = child.wait().unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(
        !d.data_dir.join("exports.json").exists()
            || !std::fs::read_to_string(d.data_dir.join("exports.json"))
                .unwrap()
                .contains("p/vm")
    );
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}
