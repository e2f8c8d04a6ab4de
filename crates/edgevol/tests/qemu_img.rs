//! qemu-img against edgevol volumes: convert a sparse raw image in and out,
//! compare, allocation map, info (over the Unix socket and TCP).

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

#[test]
fn convert_in_and_out_compare_map_info() {
    let qemu_img = qemu_img();
    let d = Daemon::start_tcp();
    d.create_pool("p", "1G", Some("1M"));
    let size = 64 * MIB;
    d.create_volume("p/v", size);
    let uri = d.uri("p/v");

    // Fill the whole volume first, so that the source's holes must really
    // be punched (not merely left unwritten) for the map to show them.
    qemu_io_ok(&uri, &["write -P 0x5a 0 64M", "flush"]);

    let src = d.path("src.raw");
    let data = make_sparse_image(&src, size, 0x5eed_0001);
    assert!(
        data.len() > 10,
        "the image should have many data extents: {data:?}"
    );

    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    let out = run_ok(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    assert!(out.contains("identical"), "qemu-img compare: {out}");

    // Out again, through TCP this time, and compare the bytes.
    let back = d.path("back.raw");
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(d.tcp_uri("p/v"))
            .arg(&back),
    );
    assert_files_equal(&src, &back);

    // The map: data exactly where the source has (non-zero) data; the
    // source's holes and written zeroes are holes that read as zeroes.
    let out = run_ok(
        Command::new(&qemu_img)
            .args(["map", "--output=json", "-f", "raw"])
            .arg(&uri),
    );
    let map: Value = serde_json::from_str(&out).expect("qemu-img map json");
    let mut mapped_data = Vec::new();
    let mut end = 0;
    for e in map.as_array().expect("array") {
        let (start, len) = (
            e["start"].as_u64().expect("start"),
            e["length"].as_u64().expect("length"),
        );
        assert_eq!(start, end, "map has a gap: {out}");
        end = start + len;
        if e["data"] == true {
            assert_eq!(e["zero"], false, "data extent reported as zero: {e}");
            mapped_data.push((start, len));
        } else {
            assert_eq!(
                e["zero"], true,
                "an unallocated extent must read as zeroes: {e}"
            );
        }
    }
    assert_eq!(end, size, "map does not cover the volume: {out}");
    let mapped_data = merge(mapped_data);
    assert_eq!(
        mapped_data, data,
        "allocated ranges of the volume differ from the source's data ranges"
    );

    // info: size and format, over both transports.
    for u in [uri.clone(), d.tcp_uri("p/v")] {
        let out = run_ok(
            Command::new(&qemu_img)
                .args(["info", "--output=json", "-f", "raw"])
                .arg(&u),
        );
        let info: Value = serde_json::from_str(&out).expect("qemu-img info json");
        assert_eq!(info["virtual-size"], size, "qemu-img info {u}: {out}");
        assert_eq!(info["format"], "raw");
    }

    // The volume accounts for what is allocated: about the data's size.
    let data_bytes: u64 = data.iter().map(|e| e.1).sum();
    let referenced = d.vol_num("p/v", "referenced");
    assert_eq!(
        referenced, data_bytes,
        "referenced should equal the data written"
    );

    d.finish(1);
}

#[test]
fn convert_to_a_snapshot_and_compare_versions() {
    // A snapshot export keeps the image converted before it, while the
    // volume takes a second image; qemu-img sees both versions.
    let qemu_img = qemu_img();
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    let size = 16 * MIB;
    d.create_volume("p/v", size);
    let uri = d.uri("p/v");
    let a = d.path("a.raw");
    let b = d.path("b.raw");
    make_sparse_image(&a, size, 11);
    make_sparse_image(&b, size, 12);
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&a)
            .arg(&uri),
    );
    d.ok(&["snapshot", "create", "p/v@a"]);
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&b)
            .arg(&uri),
    );
    let snap = d.uri("p/v@a");
    run_ok(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&a)
            .arg(&snap),
    );
    run_ok(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&b)
            .arg(&uri),
    );
    // And they differ from each other (qemu-img compare exits 1).
    let o = output(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&snap)
            .arg(&uri),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "snapshot and volume should differ:\n{}",
        show(&o)
    );
    d.finish(1);
}
