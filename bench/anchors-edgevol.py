"""edgevol as a target of the anchor harness (../shared/bench/anchors).

    EXTRA_TARGETS=$PWD/bench/anchors-edgevol.py EDGEVOL=$PWD/target/release/edgevol \
      TARGETS=native,qsd-raw,qsd-qcow2,edgevol REPEAT=3 ../shared/bench/anchors/run.sh

The image is the pool's backing file (created sparse by `edgevol up` on
first start); its data directory sits beside it. The server is `edgevol up`
in the foreground, serving the volume on the harness's Unix socket as the
default export (export name "").
"""
import os
import shutil

from targets import ImageKind, Target

EDGEVOL = os.environ.get("EDGEVOL", "edgevol")


def _create(ctx, path):
    # A fresh image: no pool file, no data directory; `up` creates both.
    shutil.rmtree(path + ".d", ignore_errors=True)


def _inspect(ctx, path):
    try:
        return {"disk_bytes": os.stat(path).st_blocks * 512}
    except OSError:
        return {}


EDGEVOL_IMAGE = ImageKind("edgevol-pool", "evpool", _create, _inspect)


def _serve(ctx, img, sock):
    # Pool capacity: twice the volume, so overwrites never wait for the cleaner
    # in these jobs (the 90%-full case is a separate scenario).
    return [EDGEVOL, "up", "--data-dir", img + ".d", "--pool-file", img,
            "--pool-size", str(ctx.size * 2 + (1 << 30)), "--volume-size", str(ctx.size),
            "--nbd-listen", "none", "--nbd-socket", sock]


TARGETS = [
    Target("edgevol", "edgevol volume over NBD (file-backed pool, thin, checksummed)", EDGEVOL_IMAGE, _serve),
]
