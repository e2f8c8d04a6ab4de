//! Encryption and compression through the CLI and NBD: a passphrase from
//! standard input, fio verify on an encrypted + compressed volume, the
//! locked export refused with a reason, wrong and right passphrases, keys
//! across daemon restarts (prompted keys stay locked, key files load by
//! themselves), change-key, and no plaintext or passphrase in the pool file.

mod support;

use std::process::Command;

use support::*;

const PASS: &[u8] = b"correct horse battery staple\n";
const MARKER: &[u8] = b"EDGEVOL-PLAINTEXT-MARKER-5d1e";

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let data = std::fs::read(path).expect("read pool file");
    data.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_compressed_volume_over_nbd() {
    let mut d = Daemon::start();
    d.create_pool("p", "512M", None);
    let out = d.cli_input(
        &[
            "--json",
            "volume",
            "create",
            "p/e",
            "--size",
            "256M",
            "-o",
            "encryption=aes-256-gcm",
            "-o",
            "compression=lz4",
        ],
        PASS,
    );
    assert!(out.status.success(), "create failed:\n{}", show(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["encryption"], "aes-256-gcm");
    assert_eq!(info["keystatus"], "available");
    let uri = d.uri("p/e");
    // fio writes half-compressible data and verifies it.
    let report = d.path("fio.json");
    let mut c = Command::new(fio());
    c.args([
        "--name=enc",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--numjobs=2",
        "--size=32M",
        "--offset_increment=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--buffer_compress_percentage=50",
        "--refill_buffers",
        "--output-format=json",
        &format!("--output={}", report.display()),
    ]);
    run_ok(&mut c);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    for job in v["jobs"].as_array().expect("jobs") {
        assert_eq!(job["error"], 0, "fio job failed: {job}");
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0,
            "nothing verified"
        );
    }
    // A distinctive plaintext, flushed.
    let mut block = Vec::new();
    while block.len() < 65536 {
        block.extend_from_slice(MARKER);
    }
    block.truncate(65536);
    python_ok(
        "import nbd, sys\nm = sys.argv[2].encode()\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pwrite((m * 65536)[:65536], 100 << 20)\nh.flush()\nh.shutdown()\n",
        &[&uri, std::str::from_utf8(MARKER).expect("ascii")],
    );
    let space = d.json(&["volume", "get", "p/e"]);
    assert_ne!(space["compressratio"], 1.0, "{space}");
    // Locked: the export is refused and says why; I/O is impossible.
    d.ok(&["volume", "unload-key", "p/e"]);
    let info = d.json(&["volume", "get", "p/e", "keystatus"]);
    assert_eq!(info["keystatus"], "unavailable");
    let mut c = Command::new(nbdinfo());
    c.env("LIBNBD_DEBUG", "1").arg(&uri);
    let err = run_fail(&mut c);
    assert!(
        err.contains("load-key"),
        "the refusal does not name the reason:\n{err}"
    );
    // A wrong passphrase: a clear error, still locked.
    let out = d.cli_input(&["volume", "load-key", "p/e"], b"not the passphrase\n");
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("wrong key or passphrase"), "{msg}");
    assert_eq!(
        d.json(&["volume", "get", "p/e", "keystatus"])["keystatus"],
        "unavailable"
    );
    // The right one; the data is there.
    let out = d.cli_input(&["volume", "load-key", "p/e"], PASS);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        nbd_read(&uri, 100 << 20, 65536) == block,
        "data read back differs"
    );
    // Nothing readable in the pool file: neither the plaintext nor the passphrase.
    d.stop_clean();
    let img = d.path("p.img");
    assert!(
        !file_contains(&img, MARKER),
        "plaintext found in the pool file"
    );
    assert!(
        !file_contains(&img, &PASS[..PASS.len() - 1]),
        "passphrase found in the pool file"
    );
    // After a restart a prompted key stays locked until loaded.
    d.restart();
    assert_eq!(
        d.json(&["volume", "get", "p/e", "keystatus"])["keystatus"],
        "unavailable"
    );
    let out = d.cli_input(&["volume", "load-key", "p/e"], PASS);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        nbd_read(&uri, 100 << 20, 65536) == block,
        "data lost across a restart"
    );
    d.finish(1);
}

#[test]
fn key_files_load_by_themselves_and_change_key_keeps_data() {
    let mut d = Daemon::start();
    d.create_pool("p", "256M", None);
    let k1 = d.path("k1.hex");
    let k2 = d.path("k2.hex");
    std::fs::write(&k1, "11".repeat(32)).expect("key file");
    std::fs::write(&k2, "22".repeat(32)).expect("key file");
    let loc1 = format!("keylocation=file://{}", k1.display());
    d.ok(&[
        "volume",
        "create",
        "p/f",
        "--size",
        "64M",
        "-o",
        "encryption=aes-256-gcm",
        "-o",
        "keyformat=hex",
        "-o",
        &loc1,
    ]);
    qemu_io_ok(&d.uri("p/f"), &["write -P 0x42 0 1M"]);
    d.ok(&["snapshot", "create", "p/f@s"]);
    qemu_io_ok(&d.uri("p/f"), &["write -P 0x43 0 64k"]);
    d.stop_clean();
    d.restart();
    assert_eq!(
        d.json(&["volume", "get", "p/f", "keystatus"])["keystatus"],
        "available"
    );
    // change-key to another file: no data rewritten, snapshots readable.
    let loc2 = format!("keylocation=file://{}", k2.display());
    d.ok(&["volume", "change-key", "p/f", "-o", &loc2]);
    d.ok(&["volume", "unload-key", "p/f"]);
    std::fs::remove_file(&k1).expect("remove old key");
    d.ok(&["volume", "load-key", "p/f"]);
    qemu_io_ok(
        &d.uri("p/f"),
        &["read -P 0x43 0 64k", "read -P 0x42 64k 960k"],
    );
    qemu_io_ro_ok(&d.uri("p/f@s"), &["read -P 0x42 0 1M"]);
    // A clone shares the key.
    d.ok(&["clone", "p/f@s", "p/g"]);
    qemu_io_ok(&d.uri("p/g"), &["read -P 0x42 0 1M"]);
    // A missing key file: a clear error naming it.
    std::fs::remove_file(&k2).expect("remove key");
    d.ok(&["volume", "unload-key", "p/f"]);
    let err = d.fail(&["volume", "load-key", "p/f"]);
    assert!(err.contains("k2.hex"), "{err}");
    d.finish(1);
}

#[test]
fn compression_defaults_from_the_pool_and_changes_apply_to_new_writes() {
    let d = Daemon::start();
    d.ok(&[
        "pool",
        "create",
        "p",
        &d.path("p.img").display().to_string(),
        "--size",
        "512M",
        "-o",
        "compression=zstd-9",
    ]);
    d.create_volume("p/v", 64 * MIB);
    let get = |prop: &str| d.json(&["volume", "get", "p/v", prop])[prop].clone();
    assert_eq!(get("compression"), "zstd-9");
    let rows = d.ok(&["volume", "get", "p/v", "compression"]);
    assert!(
        rows.contains("pool"),
        "source of an inherited value: {rows}"
    );
    // Text compresses well with zstd: stored is a fraction of referenced.
    let text = d.path("text.raw");
    let mut buf = Vec::new();
    let mut i = 0u64;
    while buf.len() < (8 * MIB) as usize {
        buf.extend_from_slice(
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    buf.truncate((8 * MIB) as usize);
    write_file(&text, &buf);
    run_ok(
        Command::new(qemu_img())
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&text)
            .arg(d.uri("p/v")),
    );
    let stored = |d: &Daemon| {
        d.json(&["volume", "get", "p/v", "stored"])["stored"]
            .as_u64()
            .expect("stored")
    };
    let first = stored(&d);
    assert!(first < 2 * MIB, "8 MiB of text stored as {first}");

    // compression=off on the volume: new writes are stored plain, the old
    // records stay compressed and readable.
    d.ok(&["volume", "set", "p/v", "compression=off"]);
    assert_eq!(get("compression"), "off");
    python_ok(
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pwrite(open(sys.argv[2], 'rb').read(), 16 << 20)\nh.flush()\nh.shutdown()\n",
        &[&d.uri("p/v"), &text.display().to_string()],
    );
    let second = stored(&d);
    assert!(
        second >= first + 8 * MIB,
        "uncompressed writes stored as {second} (was {first})"
    );
    assert!(
        nbd_read(&d.uri("p/v"), 0, 8 * MIB) == buf,
        "compressed data"
    );
    assert!(
        nbd_read(&d.uri("p/v"), 16 * MIB, 8 * MIB) == buf,
        "plain data"
    );
    // Back to the pool's default, which changes too.
    d.ok(&["pool", "set", "p", "compression=lz4"]);
    d.ok(&["volume", "inherit", "p/v", "compression"]);
    assert_eq!(get("compression"), "lz4");
    assert_eq!(
        d.json(&["pool", "get", "p", "compression"])["compression"],
        "lz4"
    );
    let e = d.fail(&["pool", "set", "p", "compression=gzip"]);
    assert!(e.contains("compression must be"), "{e}");
    let e = d.fail(&["pool", "set", "p", "dedup=on"]);
    assert!(e.contains("unknown pool property"), "{e}");
    d.finish(1);
}

#[test]
fn argon2_parameters_are_tunable_and_bounded() {
    let d = Daemon::start();
    d.create_pool("p", "256M", None);
    let create = |name: &str, mem: &str| {
        d.cli_input(
            &[
                "volume",
                "create",
                name,
                "--size",
                "16M",
                "-o",
                "encryption=on",
                "-o",
                &format!("argon2_memory={mem}"),
                "-o",
                "argon2_passes=2",
            ],
            PASS,
        )
    };
    let out = create("p/small", "4M");
    assert!(!out.status.success(), "4 MiB accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("argon2_memory"),
        "{}",
        show(&out)
    );
    let out = create("p/e", "16M");
    assert!(out.status.success(), "{}", show(&out));
    let kdf = |d: &Daemon| d.json(&["volume", "get", "p/e", "keykdf"])["keykdf"].clone();
    assert_eq!(kdf(&d), "argon2id m=16384KiB,t=2,p=1");
    qemu_io_ok(&d.uri("p/e"), &["write -P 0x3c 0 1M"]);
    // Re-tune on change-key; the same passphrase, new parameters.
    let out = d.cli_input(
        &[
            "volume",
            "change-key",
            "p/e",
            "-o",
            "argon2_memory=32M",
            "-o",
            "argon2_passes=1",
        ],
        PASS,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(kdf(&d), "argon2id m=32768KiB,t=1,p=1");
    d.ok(&["volume", "unload-key", "p/e"]);
    let out = d.cli_input(&["volume", "load-key", "p/e"], PASS);
    assert!(out.status.success(), "{}", show(&out));
    qemu_io_ok(&d.uri("p/e"), &["read -P 0x3c 0 1M"]);
    d.finish(1);
}
