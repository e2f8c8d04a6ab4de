//! Space: thin allocation, TRIM and write-zeroes returning space, NO_HOLE
//! zeroes staying allocated, online resize (grow, refused and forced shrink).

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn trim_and_zeroes_return_space() {
    let d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    d.create_volume("p/v", 128 * MIB);
    let uri = d.uri("p/v");
    let empty = d.pool_num("p", "data");
    assert!(empty < MIB, "a new pool holds data: {empty}");
    assert_eq!(d.vol_num("p/v", "referenced"), 0);

    // 64 MiB of random data (nothing compressible or dedupable).
    let src = d.path("rand.raw");
    write_random_to(&src, 64 * MIB, 77, &uri);
    let data = d.pool_num("p", "data");
    assert!(data >= 64 * MIB, "pool data {data} after writing 64 MiB");
    assert!(
        data <= 66 * MIB,
        "pool data {data} after writing 64 MiB once"
    );
    assert_eq!(d.vol_num("p/v", "referenced"), 64 * MIB);
    let free_full = d.pool_num("p", "free");

    // Trim it all: the space comes back.
    qemu_io_ok(&uri, &["discard 0 64M"]);
    assert_eq!(d.vol_num("p/v", "referenced"), 0);
    eventually("pool data after trimming everything", || {
        let data = d.pool_num("p", "data");
        (data < MIB, format!("data {data}"))
    });
    eventually("pool free space after trimming everything", || {
        let free = d.pool_num("p", "free");
        (
            free >= free_full + 60 * MIB,
            format!("free {free} (was {free_full} when full)"),
        )
    });
    assert_eq!(nbd_map(&uri), map_of(&[(0, 128 * MIB, HOLE_ZERO)]));
    qemu_io_ok(&uri, &["read -P 0 0 64M"]);

    // Write 16 MiB again, then write-zeroes that may punch holes: freed.
    qemu_io_ok(&uri, &["write -P 0x61 0 16M"]);
    assert!(d.pool_num("p", "logical") >= 16 * MIB);
    qemu_io_ok(&uri, &["write -z -u 0 16M"]);
    eventually("pool data after write-zeroes with unmap", || {
        let data = d.pool_num("p", "logical");
        (data < MIB, format!("data {data}"))
    });
    assert_eq!(nbd_map(&uri), map_of(&[(0, 128 * MIB, HOLE_ZERO)]));

    // NO_HOLE write-zeroes over data and over a hole: reads zero, reported
    // as zero but allocated (not a hole) in the map.
    qemu_io_ok(
        &uri,
        &["write -P 0x62 0 4M", "write -z 0 4M", "write -z 32M 1M"],
    );
    qemu_io_ok(&uri, &["read -P 0 0 4M", "read -P 0 32M 1M"]);
    assert_eq!(
        nbd_map(&uri),
        map_of(&[
            (0, 4 * MIB, ZERO),
            (4 * MIB, 28 * MIB, HOLE_ZERO),
            (32 * MIB, MIB, ZERO),
            (33 * MIB, 95 * MIB, HOLE_ZERO),
        ])
    );
    // Zeroes hold no data.
    assert!(
        d.vol_num("p/v", "referenced") < MIB,
        "allocated zeroes should not count as data"
    );
    d.finish(1);
}

#[test]
fn resize_grow_online_and_shrink() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 128 * MIB);
    let uri = d.uri("p/v");
    qemu_io_ok(&uri, &["write -P 0x71 0 1M", "write -P 0x72 127M 1M"]);

    // A client stays connected across the grow.
    let mut holder = NbdClient::connect(&uri);
    assert_eq!(holder.hello, (128 * MIB).to_string());

    let info = d.json(&["volume", "resize", "p/v", "256M"]);
    assert_eq!(info["size"], 256 * MIB, "{info}");
    assert_eq!(
        d.json(&["volume", "get", "p/v", "volsize"])["volsize"],
        256 * MIB
    );
    // New connections see the new size; the new space reads as zeroes and
    // takes writes; old data stays.
    assert_eq!(nbd_size(&uri), 256 * MIB);
    qemu_io_ok(
        &uri,
        &[
            "read -P 0x71 0 1M",
            "read -P 0x72 127M 1M",
            "read -P 0 128M 128M",
        ],
    );
    qemu_io_ok(&uri, &["write -P 0x73 200M 4M", "read -P 0x73 200M 4M"]);
    // The connected client keeps working within the size it was given.
    assert_eq!(holder.cmd("read 0 4096"), "ok 4096 113");
    assert_eq!(holder.cmd("write 4096 4096 0x71"), "ok");
    assert_eq!(holder.cmd("flush"), "ok");
    holder.close();
    qemu_io_ok(&uri, &["read -P 0x71 0 8k"]);

    // Grow with `volume set volsize=`.
    d.ok(&["volume", "set", "p/v", "volsize=384M"]);
    assert_eq!(nbd_size(&uri), 384 * MIB);

    // Shrinking without --force is refused and changes nothing.
    let e = d.fail(&["volume", "resize", "p/v", "192M"]);
    assert!(e.contains("--force"), "shrink without --force: {e}");
    assert_eq!(nbd_size(&uri), 384 * MIB);
    let e = d.fail(&["volume", "set", "p/v", "volsize=192M"]);
    assert!(e.contains("--force"), "shrink with volume set: {e}");
    // A size that is not a multiple of 4 KiB is refused either way.
    let e = d.fail(&["volume", "resize", "p/v", "200000", "--force"]);
    assert!(
        e.contains("4096") || e.contains("multiple"),
        "unaligned size: {e}"
    );
    let e = d.fail(&["volume", "resize", "p/v", "402657281"]); // 384M + 4097: a grow
    assert!(
        e.contains("4096") || e.contains("multiple"),
        "unaligned size: {e}"
    );
    assert_eq!(nbd_size(&uri), 384 * MIB);
    qemu_io_ok(&uri, &["read -P 0x73 200M 4M"]);

    // With --force it shrinks; growing back, the cut data reads as zeroes.
    let info = d.json(&["volume", "resize", "p/v", "192M", "--force"]);
    assert_eq!(info["size"], 192 * MIB);
    assert_eq!(nbd_size(&uri), 192 * MIB);
    qemu_io_ok(&uri, &["read -P 0x71 0 1M", "read -P 0x72 127M 1M"]);
    qemu_io_fail(&uri, &["read 200M 4k"]);
    assert_eq!(
        d.vol_num("p/v", "referenced"),
        2 * MIB,
        "the cut 4 MiB are no longer referenced"
    );
    d.json(&["volume", "resize", "p/v", "256M"]);
    qemu_io_ok(&uri, &["read -P 0 192M 64M", "read -P 0x72 127M 1M"]);
    let map = nbd_map(&uri);
    assert_eq!(
        map,
        map_of(&[
            (0, MIB, DATA),
            (MIB, 126 * MIB, HOLE_ZERO),
            (127 * MIB, MIB, DATA),
            (128 * MIB, 128 * MIB, HOLE_ZERO),
        ]),
        "map after shrink and grow"
    );
    d.finish(1);
}

#[test]
fn shrink_keeps_snapshots_intact() {
    // Shrinking the head does not touch a snapshot taken before.
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 64 * MIB);
    let uri = d.uri("p/v");
    qemu_io_ok(&uri, &["write -P 0x81 0 64M"]);
    d.ok(&["snapshot", "create", "p/v@full"]);
    d.json(&["volume", "resize", "p/v", "16M", "--force"]);
    assert_eq!(nbd_size(&uri), 16 * MIB);
    let snap = d.uri("p/v@full");
    assert_eq!(nbd_size(&snap), 64 * MIB);
    qemu_io_ro_ok(&snap, &["read -P 0x81 0 64M"]);
    d.json(&["volume", "resize", "p/v", "64M"]);
    qemu_io_ok(&uri, &["read -P 0x81 0 16M", "read -P 0 16M 48M"]);
    // Rolling back restores the old size and data.
    d.json(&["snapshot", "rollback", "p/v@full"]);
    assert_eq!(nbd_size(&uri), 64 * MIB);
    qemu_io_ok(&uri, &["read -P 0x81 0 64M"]);
    d.finish(1);
}

#[test]
fn full_pool_fails_writes_with_enospc_and_recovers() {
    let d = Daemon::start();
    d.create_pool("small", "128M", Some("1M"));
    // Uncompressed: patterned data would otherwise fit.
    d.ok(&[
        "volume",
        "create",
        "small/v",
        "--size",
        "256M",
        "-o",
        "compression=off",
    ]);
    let uri = d.uri("small/v");
    // More than the pool can hold: the write fails with ENOSPC.
    let out = qemu_io_fail(&uri, &["write -P 0x91 0 200M"]);
    assert!(
        out.contains("No space left on device"),
        "writing past a full pool: {out}"
    );
    let st = d.pool_status("small");
    assert_eq!(st["state"], "ONLINE", "{st}");
    let size = st["size"].as_u64().expect("size");
    let data = st["data"].as_u64().expect("data");
    assert!(data <= size, "data {data} exceeds the pool size {size}");
    // Still serving: reads work, a trim frees everything, writes work again.
    qemu_io_ok(&uri, &["read 0 1M"]);
    qemu_io_ok(&uri, &["discard 0 256M"]);
    eventually("pool data after trimming a full pool", || {
        let data = d.pool_num("small", "data");
        (data < MIB, format!("data {data}"))
    });
    qemu_io_ok(
        &uri,
        &[
            "write -P 0x92 0 64M",
            "flush",
            "read -P 0x92 0 64M",
            "read -P 0 64M 192M",
        ],
    );
    d.finish(1);
}

#[test]
fn huge_thin_volume_on_a_small_pool() {
    // Thin provisioning: a 1 PiB volume on a 256 MiB pool, written at both ends.
    let d = Daemon::start();
    d.create_pool("p", "256M", None);
    let size = 1u64 << 50;
    d.create_volume("p/huge", size);
    let uri = d.uri("p/huge");
    assert_eq!(nbd_size(&uri), size);
    let last = size - 64 * KIB;
    qemu_io_ok(
        &uri,
        &[
            "write -P 0xa5 0 64k",
            &format!("write -P 0xa6 {last} 64k"),
            "flush",
        ],
    );
    qemu_io_ok(
        &uri,
        &[
            "read -P 0xa5 0 64k",
            &format!("read -P 0xa6 {last} 64k"),
            &format!("read -P 0 {} 1M", size / 2),
        ],
    );
    // The map at both ends (the whole 1 PiB would take millions of block
    // status round trips: the server answers at most 64 MiB per request).
    assert_eq!(
        block_status(&uri, 0, 32 * MIB),
        map_of(&[
            (0, 64 * KIB, DATA),
            (64 * KIB, 32 * MIB - 64 * KIB, HOLE_ZERO)
        ])
    );
    assert_eq!(
        block_status(&uri, size - 32 * MIB, 32 * MIB),
        map_of(&[
            (size - 32 * MIB, 32 * MIB - 64 * KIB, HOLE_ZERO),
            (last, 64 * KIB, DATA)
        ])
    );
    assert_eq!(d.vol_num("p/huge", "referenced"), 128 * KIB);
    // Sizes the engine cannot address are refused clearly.
    let e = d.fail(&["volume", "create", "p/toobig", "--size", "16383P"]);
    assert!(e.contains("too large"), "{e}");
    // Checking the pool costs what is stored (128 KiB), not the volume's
    // logical size.
    d.check_pool_within("p", Duration::from_secs(30));
    d.finish(1);
}

/// Block status of `[off, off+len)` (base:allocation), merged, with libnbd.
fn block_status(uri: &str, off: u64, len: u64) -> Vec<MapExtent> {
    let out = python_ok(
        r#"
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
off, end = int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])
pos = off
while pos < end:
    got = []
    def cb(meta, o, entries, err):
        got.extend(entries)
        return 0
    h.block_status(min(end - pos, 1 << 30), pos, cb)
    for i in range(0, len(got), 2):
        n = min(got[i], end - pos)
        if n > 0:
            print(pos, n, got[i + 1])
        pos += n
h.shutdown()
"#,
        &[uri, &off.to_string(), &len.to_string()],
    );
    let v: Vec<(u64, u64, u64)> = out
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
            (f[0], f[1], f[2])
        })
        .collect();
    map_of(&v)
}

/// fio random 4 KiB overwrites of `region` bytes, `total` bytes in all,
/// with a flush every 32 writes; killed after `limit`. Returns fio's exit
/// status and text output, or None if it had to be killed (writes hung).
fn overwrite(
    d: &Daemon,
    vol: &str,
    region: u64,
    total: u64,
    limit: Duration,
) -> Option<(bool, String)> {
    let out = d.path(&format!("fio-{}.txt", vol.replace('/', "-")));
    let mut c = Command::new(fio());
    c.current_dir(d.dir.path())
        .args([
            "--name=overwrite",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
        ])
        .args([
            "--norandommap",
            "--randrepeat=0",
            "--fsync=32",
            "--verify_state_save=0",
        ])
        .arg(format!("--uri={}", d.uri(vol)))
        .arg(format!("--size={region}"))
        .arg(format!("--io_size={total}"))
        .arg(format!("--output={}", out.display()));
    let o = output_timeout(&mut c, limit)?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    Some((
        o.status.success(),
        format!("{text}\n{}", String::from_utf8_lossy(&o.stderr)),
    ))
}

#[test]
fn sustained_overwrites_do_not_run_out_of_space() {
    // Live data of a third of the pool's free space, overwritten at random
    // until four times the pool's size was written: the space of
    // overwritten blocks must be reused (the cleaner keeps up, or writes
    // wait for it); no write may fail for lack of space.
    let mut d = Daemon::start();
    d.create_pool("p", "128M", Some("1M"));
    d.create_volume("p/v", 128 * MIB);
    let free = d.pool_num("p", "free");
    let region = (free / 3 / MIB * MIB).max(4 * MIB);
    let r = overwrite(&d, "p/v", region, 512 * MIB, Duration::from_secs(180));
    let (ok, text) = r.unwrap_or_else(|| {
        panic!(
            "overwriting {region} bytes of a 128 MiB pool ({free} free) hung for 180 s; pool status: {}",
            d.pool_status("p")
        )
    });
    assert!(
        ok,
        "overwriting {region} bytes in a 128 MiB pool ({free} bytes free at the start) failed; pool status {}:\n{text}",
        d.pool_status("p")
    );
    let st = d.pool_status("p");
    let data = st["data"].as_u64().expect("data");
    assert!(
        data <= region,
        "pool data {data} exceeds the live data {region}: {st}"
    );
    assert_eq!(st["maintenance_error"], serde_json::Value::Null, "{st}");
    assert!(
        st["counters"]["cleaned_segments"].as_u64().unwrap_or(0) > 0,
        "writing 4 times the pool's size needs the cleaner: {st}"
    );
    d.check_pool("p");
    d.stop_clean();
    d.restart();
    assert_eq!(d.pool_status("p")["state"], "ONLINE");
    d.finish(1);
}

#[test]
fn a_full_pool_recovers_after_trim_and_restart() {
    // Overwrites on a small pool until it is full (failing writes with
    // ENOSPC is fine then); trimming everything must make writes work
    // again, and the pool must import after a restart.
    let mut d = Daemon::start();
    d.create_pool("p", "40M", Some("1M"));
    d.create_volume("p/v", 64 * MIB);
    let _ = overwrite(&d, "p/v", 16 * MIB, 200 * MIB, Duration::from_secs(60));
    let uri = d.uri("p/v");
    let discard = output_timeout(
        Command::new(qemu_io())
            .args(["-f", "raw", "-c", "discard 0 64M"])
            .arg(&uri),
        Duration::from_secs(30),
    );
    assert!(
        discard.as_ref().is_some_and(|o| o.status.success()),
        "trimming the whole volume failed or hung: {:?}",
        discard.map(|o| show(&o))
    );
    eventually("writes after trimming a full pool", || {
        let o = output_timeout(
            Command::new(qemu_io())
                .args(["-f", "raw", "-c", "write -P 0x5e 0 1M", "-c", "flush"])
                .arg(&uri),
            Duration::from_secs(20),
        );
        let ok = o.as_ref().is_some_and(|o| o.status.success());
        (
            ok,
            format!(
                "{:?}; pool status {}",
                o.map(|o| show(&o)),
                d.pool_status("p")
            ),
        )
    });
    d.stop_clean();
    d.restart();
    let st = d.pool_status("p");
    assert_eq!(
        st["state"], "ONLINE",
        "the pool did not import after a restart: {st}"
    );
    qemu_io_ok(&uri, &["read -P 0x5e 0 1M", "read -P 0 1M 63M"]);
    d.finish(1);
}

/// Write `len` random (incompressible) bytes to the file `src` and, with
/// qemu-img, to the NBD export `uri`.
fn write_random_to(src: &std::path::Path, len: u64, seed: u64, uri: &str) {
    let mut buf = vec![0u8; len as usize];
    Rng::new(seed).fill(&mut buf);
    write_file(src, &buf);
    drop(buf);
    run_ok(
        Command::new(qemu_img())
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(src)
            .arg(uri),
    );
}

/// The `usable` figure `pool create` prints and `pool status` reports.
fn printed_usable(out: &str) -> String {
    out.split(": ")
        .nth(1)
        .and_then(|s| s.split(" usable").next())
        .unwrap_or_else(|| panic!("no usable size in {out:?}"))
        .to_string()
}

#[test]
fn pool_sizes_are_the_truth_and_small_pools_keep_a_small_reserve() {
    let d = Daemon::start();
    // What `pool create` prints is what `pool status` says is usable, and
    // the reserve's parts add up to the difference.
    for (name, size) in [("f", "4G"), ("s", "192M")] {
        let file = d.path(&format!("{name}.img"));
        let out = d.ok(&[
            "pool",
            "create",
            name,
            file.to_str().unwrap(),
            "--size",
            size,
        ]);
        let st = d.pool_status(name);
        let usable = st["usable"].as_u64().unwrap();
        let total = st["size"].as_u64().unwrap();
        let human_status = d.ok(&["pool", "status", name]);
        assert!(
            human_status.contains(&format!("usable: {}", printed_usable(&out))),
            "pool create said {out:?}, pool status says:\n{human_status}"
        );
        assert!(human_status.contains("reserve: "), "{human_status}");
        let r = &st["reserve"];
        let parts: u64 = [
            "metadata",
            "metadata_floor",
            "cleaner",
            "streams",
            "overprovision",
        ]
        .iter()
        .map(|k| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("reserve.{k} in {st}"))
        })
        .sum();
        assert_eq!(total - usable, parts, "reserve parts {r} of {st}");
        assert!(
            st["raw_size"].as_u64().unwrap() >= total,
            "raw size below pool size: {st}"
        );
    }
    // A small pool keeps a proportionate reserve: 192 MiB of 8 MiB
    // segments held back 70% (it accepted 51 MiB).
    let usable = d.pool_num("s", "usable");
    assert!(
        usable >= 150 * MIB,
        "a 192 MiB pool should accept at least 150 MiB, says {usable}"
    );
    // ... and really takes it: random (incompressible) data up to the
    // usable size less the metadata its map needs.
    let len = usable / MIB * MIB - 8 * MIB;
    d.create_volume("s/v", 192 * MIB);
    let src = d.path("rand.raw");
    write_random_to(&src, len, 192, &d.uri("s/v"));
    run_ok(
        Command::new(qemu_img())
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(d.uri("s/v")),
    );
    d.check_pool("s");
}
