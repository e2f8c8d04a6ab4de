//! nbdcopy: a sparse file into a volume and back out, and volume to volume
//! (same pool and across pools), with byte comparisons and sparseness kept.

mod support;

use std::process::Command;

use support::*;

fn data_ranges(map: &[MapExtent]) -> Vec<(u64, u64)> {
    merge(
        map.iter()
            .filter(|e| e.kind == DATA)
            .map(|e| (e.offset, e.length))
            .collect(),
    )
}

#[test]
fn file_in_out_and_volume_to_volume() {
    let nbdcopy = nbdcopy();
    let d = Daemon::start_tcp();
    d.create_pool("p", "1G", Some("1M"));
    d.create_pool("q", "1G", None);
    let size = 64 * MIB;
    d.create_volume("p/a", size);
    d.create_volume("p/b", size);
    d.create_volume("q/c", size);

    let src = d.path("src.raw");
    let data = make_sparse_image(&src, size, 0xc0b1);
    // Destination b starts full of other data: the copy must replace it all.
    qemu_io_ok(&d.uri("p/b"), &["write -P 0x77 0 64M"]);

    run_ok(Command::new(&nbdcopy).arg(&src).arg(d.uri("p/a")));
    let out = d.path("out.raw");
    run_ok(Command::new(&nbdcopy).arg(d.uri("p/a")).arg(&out));
    assert_files_equal(&src, &out);
    // Sparse in, sparse kept: only the source's data is allocated.
    assert_eq!(
        data_ranges(&nbd_map(&d.uri("p/a"))),
        data,
        "p/a allocation after nbdcopy in"
    );

    // Volume to volume, within a pool (Unix) and across pools (TCP),
    // with several connections and requests in flight.
    run_ok(
        Command::new(&nbdcopy)
            .args(["--connections=4", "--requests=16"])
            .arg(d.uri("p/a"))
            .arg(d.uri("p/b")),
    );
    run_ok(
        Command::new(&nbdcopy)
            .arg(d.tcp_uri("p/a"))
            .arg(d.tcp_uri("q/c")),
    );
    for v in ["p/b", "q/c"] {
        let f = d.path(&format!("{}.raw", v.replace('/', "-")));
        run_ok(Command::new(&nbdcopy).arg(d.uri(v)).arg(&f));
        assert_files_equal(&src, &f);
        let m = nbd_map(&d.uri(v));
        // The destination reads as the source; its formerly written areas
        // that are holes in the source are zero (hole or allocated zero).
        for e in &m {
            if e.kind == DATA {
                assert!(
                    data.iter()
                        .any(|&(o, l)| o <= e.offset && e.offset + e.length <= o + l),
                    "{v}: data extent {e:?} outside the source's data"
                );
            }
        }
    }

    // Copy from a snapshot export while the volume changes.
    d.ok(&["snapshot", "create", "p/a@s"]);
    qemu_io_ok(&d.uri("p/a"), &["write -P 0x11 0 64M"]);
    let snapcopy = d.path("snap.raw");
    run_ok(Command::new(&nbdcopy).arg(d.uri("p/a@s")).arg(&snapcopy));
    assert_files_equal(&src, &snapcopy);

    d.finish(2);
}
