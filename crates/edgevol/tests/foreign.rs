//! `pool create`, `pool add` and `pool replace` never destroy foreign data
//! (docs/devices.md). Images made by the real tools (mkfs.ext4, mkfs.xfs,
//! sgdisk, mkswap, pvcreate, cryptsetup, qemu-img), a file of random bytes
//! and a device of another pool are refused, the message naming what they
//! hold, and are left unchanged byte for byte; `--force` takes them and the
//! pool works. Devices in use (mounted, a mounted loop device's backing
//! file, claimed exclusively by another process) are refused even with
//! `--force`.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The SHA-256 of a file or block device (`sha256sum`).
fn hash(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// A tag blkid finds on a device (`blkid -p -o value -s TAG`): the tools'
/// own account of what the message must name.
fn blkid(path: &Path, tag: &str) -> String {
    let out = run_ok(
        Command::new(require("blkid", "util-linux"))
            .args(["-p", "-o", "value", "-s", tag])
            .arg(path),
    );
    let v = out.trim().to_string();
    assert!(!v.is_empty(), "blkid found no {tag} on {}", path.display());
    v
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("create a sparse file");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn pool_names(d: &Daemon) -> Vec<String> {
    d.json(&["pool", "list"])
        .as_array()
        .expect("pool list")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect()
}

/// A 4 MiB volume on `pool` takes a write and reads it back over NBD.
fn usable(d: &Daemon, pool: &str) {
    assert_eq!(d.pool_status(pool)["state"], "ONLINE");
    let vol = format!("{pool}/v");
    d.create_volume(&vol, 4 * MIB);
    qemu_io_ok(&d.uri(&vol), &["write -P 0x5a 0 1M"]);
    qemu_io_ok(&d.uri(&vol), &["read -P 0x5a 0 1M"]);
}

/// `pool create POOL DEV` is refused: exit 1, the message names DEV, each
/// of `expect` and `--force`; `bytes` (DEV, or the file behind it) is
/// unchanged and no pool was recorded. Then `--force` creates a pool that
/// works, and it is destroyed again.
fn refused_then_forced(d: &Daemon, pool: &str, dev: &Path, bytes: &Path, expect: &[&str]) {
    let before = hash(bytes);
    let e = d.fail(&["pool", "create", pool, s(dev), "-o", "segment_size=1M"]);
    assert!(
        e.contains(s(dev)),
        "the message should name the device: {e}"
    );
    for x in expect {
        assert!(e.contains(x), "the message should say {x:?}: {e}");
    }
    assert!(e.contains("use --force to overwrite it"), "{e}");
    assert_eq!(
        hash(bytes),
        before,
        "a refused pool create changed {}",
        dev.display()
    );
    assert!(!pool_names(d).contains(&pool.to_string()));

    let args = [
        "pool",
        "create",
        pool,
        s(dev),
        "-o",
        "segment_size=1M",
        "--force",
    ];
    d.ok(&args);
    usable(d, pool);
    d.ok(&["pool", "destroy", pool]);
}

#[test]
fn file_systems_and_images_made_by_their_tools_are_refused_then_forced() {
    let d = Daemon::start();
    let img = |n: &str| d.path(n);

    let ext4 = img("ext4.img");
    sparse(&ext4, 64 * MIB);
    run_ok(
        Command::new(require("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-L", "data"])
            .arg(&ext4),
    );
    let uuid = blkid(&ext4, "UUID");
    let named = format!("holds an ext4 file system (UUID {uuid}, label \"data\")");
    refused_then_forced(&d, "e", &ext4, &ext4, &[&named]);

    let xfs = img("xfs.img");
    sparse(&xfs, 512 * MIB); // mkfs.xfs wants 300 MiB at least
    run_ok(
        Command::new(require("mkfs.xfs", "xfsprogs"))
            .args(["-q", "-L", "xlab"])
            .arg(&xfs),
    );
    let named = format!(
        "holds an XFS file system (UUID {}, label \"xlab\")",
        blkid(&xfs, "UUID")
    );
    refused_then_forced(&d, "x", &xfs, &xfs, &[&named]);

    let gpt = img("gpt.img");
    sparse(&gpt, 64 * MIB);
    run_ok(
        Command::new(require("sgdisk", "gdisk"))
            .args(["-n", "1:0:0"])
            .arg(&gpt),
    );
    let named = format!(
        "holds a GPT partition table (UUID {})",
        blkid(&gpt, "PTUUID")
    );
    refused_then_forced(&d, "g", &gpt, &gpt, &[&named]);

    let swap = img("swap.img");
    sparse(&swap, 64 * MIB);
    run_ok(
        Command::new(require("mkswap", "util-linux"))
            .args(["-L", "sw"])
            .arg(&swap),
    );
    let named = format!(
        "holds a swap area (UUID {}, label \"sw\")",
        blkid(&swap, "UUID")
    );
    refused_then_forced(&d, "s", &swap, &swap, &[&named]);

    let luks = img("luks.img");
    sparse(&luks, 64 * MIB);
    let key = img("luks.key");
    write_file(&key, b"a key file for luksFormat");
    run_ok(
        Command::new(require("cryptsetup", "cryptsetup-bin"))
            .args([
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--label",
                "lk",
            ])
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .arg("--key-file")
            .arg(&key)
            .arg(&luks),
    );
    let named = format!(
        "holds a LUKS2 encrypted volume (UUID {}, label \"lk\")",
        blkid(&luks, "UUID")
    );
    refused_then_forced(&d, "l", &luks, &luks, &[&named]);

    let qcow = img("disk.qcow2");
    run_ok(
        Command::new(qemu_img())
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=metadata",
            ])
            .arg(&qcow)
            .arg("64M"),
    );
    refused_then_forced(&d, "q", &qcow, &qcow, &["holds a qcow2 image"]);

    // Random bytes: no format, but data.
    let random = img("random.img");
    let mut bytes = vec![0u8; (64 * MIB) as usize];
    Rng::new(seed("random")).fill(&mut bytes);
    write_file(&random, &bytes);
    let first = bytes.iter().position(|&b| b != 0).expect("a non-zero byte");
    let named = format!("holds data (non-zero bytes at offset {first})");
    refused_then_forced(&d, "r", &random, &random, &[&named]);

    // A file that is zero where the check looks is taken as it is.
    let zero = img("zero.img");
    sparse(&zero, 64 * MIB);
    d.ok(&["pool", "create", "z", s(&zero), "-o", "segment_size=1M"]);
    usable(&d, "z");
    d.finish(1);
}

#[test]
fn a_device_of_another_pool_is_refused_then_forced() {
    let mut other = Daemon::start();
    let theirs = other.path("theirs.img");
    other.ok(&[
        "pool",
        "create",
        "mine",
        s(&theirs),
        "--size",
        "64M",
        "-o",
        "segment_size=1M",
    ]);
    other.create_volume("mine/data", 4 * MIB);
    qemu_io_ok(&other.uri("mine/data"), &["write -P 0x3c 0 1M"]);
    other.stop_clean();

    let d = Daemon::start();
    refused_then_forced(
        &d,
        "stolen",
        &theirs,
        &theirs,
        &["holds a device of edgevol pool \"mine\""],
    );
    d.finish(0);
}

#[test]
fn an_lvm_physical_volume_on_a_loop_device() {
    let d = Daemon::start();
    let file = d.path("pv.img");
    sparse(&file, 64 * MIB);
    let Some(lo) = Loop::new(&file) else {
        return;
    };
    let dev = Path::new(&lo.dev);
    run_ok(
        Command::new(require("pvcreate", "lvm2"))
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .args(["-ff", "-y"])
            .arg(dev),
    );
    let uuid = blkid(dev, "UUID");
    let named = format!("holds an LVM2 physical volume (UUID {uuid})");
    refused_then_forced(&d, "lv", dev, &file, &[&named]);
    d.finish(0);
}

#[test]
fn pool_add_and_replace_refuse_foreign_devices() {
    let d = Daemon::start();
    let f = |n: &str| d.path(n);
    let (a, b) = (f("a.img"), f("b.img"));
    d.ok(&[
        "pool",
        "create",
        "p",
        "mirror",
        s(&a),
        s(&b),
        "--size",
        "64M",
        "-o",
        "segment_size=1M",
    ]);
    usable(&d, "p");
    let ext4 = f("ext4.img");
    sparse(&ext4, 64 * MIB);
    run_ok(
        Command::new(require("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-L", "data"])
            .arg(&ext4),
    );
    let before = hash(&ext4);

    // add: one flag, --force, covers less redundancy and foreign data;
    // without it the foreign device is named.
    let e = d.fail(&["pool", "add", "p", "mirror", s(&f("c.img")), s(&ext4)]);
    assert!(
        e.contains("holds an ext4 file system") && e.contains("--force"),
        "{e}"
    );
    assert!(!f("c.img").exists(), "a refused add created c.img");
    let e = d.fail(&["pool", "replace", "p", s(&b), s(&ext4)]);
    assert!(
        e.contains("holds an ext4 file system") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        hash(&ext4),
        before,
        "a refused add or replace changed the file"
    );
    let st = d.pool_status("p");
    assert_eq!(st["groups"].as_array().map(Vec::len), Some(1), "{st}");
    assert!(st.to_string().contains(s(&b)), "b was replaced: {st}");

    // Forced, the replace takes it and resilvers.
    d.ok(&["pool", "replace", "p", s(&b), s(&ext4), "--force"]);
    eventually("resilver onto the ext4 image", || {
        let st = d.pool_status("p");
        (
            st["state"] == "ONLINE" && st.to_string().contains(s(&ext4)),
            st.to_string(),
        )
    });
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x5a 0 1M"]);
    d.finish(1);
}

#[test]
fn devices_in_use_are_refused_even_with_force() {
    let d = Daemon::start();
    let file = d.path("mounted.img");
    sparse(&file, 64 * MIB);
    // Initialised in full now, so that a (read-only) mount writes nothing.
    run_ok(
        Command::new(require("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&file),
    );
    let Some(lo) = Loop::new(&file) else {
        return;
    };
    let dev = Path::new(&lo.dev);
    let before = hash(&file);

    // Held exclusively by another process (here: this test, O_EXCL).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev)
            .expect("open the loop device O_EXCL");
        let e = d.fail(&[
            "pool",
            "create",
            "h",
            s(dev),
            "-o",
            "segment_size=1M",
            "--force",
        ]);
        assert!(e.contains("held open exclusively"), "{e}");
        assert!(e.contains("not even with --force"), "{e}");
    }

    let mnt = d.path("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let o = output(Command::new("mount").args(["-o", "ro"]).arg(dev).arg(&mnt));
    if !o.status.success() {
        eprintln!("SKIP: cannot mount here: {}", show(&o));
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);

    let e = d.fail(&[
        "pool",
        "create",
        "m",
        s(dev),
        "-o",
        "segment_size=1M",
        "--force",
    ]);
    assert!(
        e.contains(&format!("is mounted on {}", mnt.display())),
        "{e}"
    );
    assert!(e.contains("not even with --force"), "{e}");
    let e = d.fail(&[
        "pool",
        "create",
        "m",
        s(&file),
        "-o",
        "segment_size=1M",
        "--force",
    ]);
    assert!(
        e.contains(&format!("is the backing file of {}", lo.dev)),
        "{e}"
    );
    let st = d.ok(&[
        "pool",
        "create",
        "p",
        s(&d.path("p.img")),
        "--size",
        "64M",
        "-o",
        "segment_size=1M",
    ]);
    assert!(st.contains("created"), "{st}");
    let e = d.fail(&["pool", "add", "p", s(dev), "--force"]);
    assert!(e.contains("is mounted on"), "{e}");
    let e = d.fail(&[
        "pool",
        "replace",
        "p",
        s(&d.path("p.img")),
        s(&file),
        "--force",
    ]);
    assert!(e.contains("is the backing file of"), "{e}");
    assert_eq!(
        hash(&file),
        before,
        "a refused claim changed the mounted file system"
    );
    drop(_unmount);
    assert_eq!(pool_names(&d), ["p"]);
    d.finish(1);
}

/// `pool destroy` zeroes the first and last MiB of its devices, so the
/// files of a destroyed pool make a new one without `--force` even when
/// its data reached the end of the file.
#[test]
fn a_destroyed_pools_files_are_taken_again_without_force() {
    let d = Daemon::start();
    let file = d.path("p.img");
    d.ok(&[
        "pool",
        "create",
        "p",
        s(&file),
        "--size",
        "32M",
        "-o",
        "segment_size=1M",
        "-o",
        "compression=off",
    ]);
    d.create_volume("p/v", 8 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x6b 0 8M"]);
    // Segments are taken lowest first and the last ones are the reserve,
    // so only a nearly full pool writes its last segment: stand in for
    // that with bytes written there while the pool has the file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open");
        f.write_all_at(&[0x6b; 4096], 32 * MIB - 8192)
            .expect("write the last segment");
        f.sync_all().expect("sync");
    }
    let mib = MIB as usize;
    d.ok(&["pool", "destroy", "p"]);
    let bytes = std::fs::read(&file).expect("read the file");
    assert!(
        bytes[mib..bytes.len() - mib].contains(&0x6b),
        "the volume's data should still be in the file (destroy erases the ends only)"
    );
    assert!(bytes[..mib].iter().all(|&b| b == 0), "first MiB not erased");
    assert!(
        bytes[bytes.len() - mib..].iter().all(|&b| b == 0),
        "last MiB not erased"
    );
    d.ok(&["pool", "create", "q", s(&file), "-o", "segment_size=1M"]);
    usable(&d, "q");
    d.finish(1);
}

/// While a pool serves from a block device, the daemon holds it open
/// exclusively (O_EXCL): mkfs, a mount and another exclusive opener are
/// refused by the kernel, and the pool's data stays intact. Once the pool
/// is destroyed the device is free again.
#[test]
fn a_served_pool_device_cannot_be_formatted_or_mounted() {
    let d = Daemon::start();
    let file = d.path("served.img");
    sparse(&file, 64 * MIB);
    let Some(lo) = Loop::new(&file) else {
        return;
    };
    let dev = Path::new(&lo.dev);
    d.ok(&["pool", "create", "b", s(dev), "-o", "segment_size=1M"]);
    usable(&d, "b");

    let o = output(
        Command::new(require("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F"])
            .arg(dev),
    );
    assert!(
        !o.status.success(),
        "mkfs.ext4 on a served pool device: {}",
        show(&o)
    );
    let mnt = d.path("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let o = output(Command::new("mount").arg(dev).arg(&mnt));
    if o.status.success() {
        let _ = Command::new("umount").arg(&mnt).status();
        panic!("mounted a served pool device");
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let e = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev)
            .expect_err("an exclusive open of a served pool device");
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
    }
    // The pool's data is intact.
    assert_eq!(d.pool_status("b")["state"], "ONLINE");
    qemu_io_ok(&d.uri("b/v"), &["read -P 0x5a 0 1M"]);
    let r = d.json(&["pool", "check", "b"]);
    assert!(r["errors"].as_array().expect("errors").is_empty(), "{r}");

    d.ok(&["pool", "destroy", "b", "--force"]);
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev)
            .expect("a destroyed pool's device is free");
    }
    d.finish(0);
}
