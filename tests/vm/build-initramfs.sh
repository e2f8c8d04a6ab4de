#!/bin/bash
# Build the edgevol test guest's initramfs: a gzip'd newc cpio holding
# busybox-static (the shell and tools), fio and the shared libraries it loads,
# util-linux's blkdiscard (for discard and write-zeroes), the virtio-pci and
# virtio-blk modules of the installed Debian kernel, the job files of
# tests/vm/jobs, tests/vm/init as /init and tests/vm/guest-lib.sh as
# /lib/ev/lib.sh (the marker helpers that /init and the *.sh jobs share).
#
# The result is cached under $EDGEVOL_VM_DIR (default /var/tmp/edgevol-vm),
# keyed by a hash of everything that goes into it: a second run with the same
# inputs only prints the paths. Prints, as shell-sourceable lines:
#   EV_VM_KERNEL=/boot/vmlinuz-<kver>
#   EV_VM_INITRAMFS=$EDGEVOL_VM_DIR/initramfs-<key>.cpio.gz
#   EV_VM_KVER=<kver>
#
# Usage: build-initramfs.sh [--kver KVER] [--force] [--no-install]
#   --kver KVER    kernel release (default: the newest one with /boot/vmlinuz-KVER
#                  and /lib/modules/KVER)
#   --force        rebuild even if the cached image exists
#   --no-install   do not run install-deps.sh (fail instead when tools are missing)
# Missing Debian packages (busybox-static fio linux-image-amd64 cpio
# qemu-system-x86 ...) are installed with apt-get by install-deps.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VMDIR=${EDGEVOL_VM_DIR:-/var/tmp/edgevol-vm}
KVER="" FORCE=0 INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --kver) KVER=$2; shift ;;
        --force) FORCE=1 ;;
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "build-initramfs.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ $INSTALL = 1 ]; then
    "$HERE/install-deps.sh"
else
    "$HERE/install-deps.sh" --check
fi

if [ -z "$KVER" ]; then
    for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [ -f "/lib/modules/$k/modules.dep" ] && KVER=$k
    done
fi
[ -n "$KVER" ] || { echo "no kernel with modules found (apt-get install linux-image-amd64)" >&2; exit 1; }
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -f "$KERNEL" ] && [ -f "$MODDIR/modules.dep" ] || { echo "kernel $KVER: $KERNEL or $MODDIR missing" >&2; exit 1; }

BUSYBOX=$(command -v busybox)
FIO=$(command -v fio)
BLKDISCARD=$(command -v blkdiscard)
LC_ALL=C file -L "$BUSYBOX" | grep -q 'statically linked' ||
    { echo "$BUSYBOX is not statically linked: apt-get install busybox-static" >&2; exit 1; }

# ---- cache key: every input's content ---------------------------------------------
# The guest files, this script, the binaries we copy, the kernel and its
# module index. (Shared libraries are covered by the binaries' package
# versions changing together with them in practice; --force rebuilds.)
inputs=("$0" "$HERE/init" "$HERE/guest-lib.sh" "$HERE"/jobs/* "$BUSYBOX" "$FIO" "$BLKDISCARD" "$KERNEL" "$MODDIR/modules.dep")
KEY=$( { for f in "${inputs[@]}"; do echo "$(basename "$f") $(sha256sum < "$f" | cut -c1-64)"; done
         ldd "$FIO" "$BLKDISCARD" | awk '/=> \//{print $3}' | sort -u | xargs -r sha256sum; } |
       sha256sum | cut -c1-16)
IMG=$VMDIR/initramfs-$KEY.cpio.gz

emit() {
    echo "EV_VM_KERNEL=$KERNEL"
    echo "EV_VM_INITRAMFS=$IMG"
    echo "EV_VM_KVER=$KVER"
}

mkdir -p "$VMDIR"
# Serialise concurrent builds (several tests may ask at once).
exec 9> "$VMDIR/.build.lock"
flock 9
if [ $FORCE = 0 ] && [ -s "$IMG" ]; then
    emit
    exit 0
fi

STAGE=$(mktemp -d "$VMDIR/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,etc,jobs,lib/ev,lib/modules-ev,lib64}

# ---- busybox: one static binary, an applet link per command ---------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done

# ---- dynamically linked tools, each library at the path ldd resolved ------------
# (the dynamic loader must be at /lib64/ld-linux-x86-64.so.2, the PT_INTERP path)
copy_with_libs() { # $1 = binary, $2 = destination path inside the image
    mkdir -p "$ROOT$(dirname "$2")"
    cp -L "$1" "$ROOT$2"
    ldd "$1" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}' | while read -r lib; do
        [ -e "$ROOT$lib" ] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}
copy_with_libs "$FIO" /usr/bin/fio
# util-linux's blkdiscard goes before busybox's in PATH: it has -z (write zeroes)
copy_with_libs "$BLKDISCARD" /usr/sbin/blkdiscard
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || { echo "dynamic loader was not copied" >&2; exit 1; }

# ---- kernel modules: virtio_pci and virtio_blk with their dependencies ----------
# modules.dep lines are "path: dep dep ..."; emit dependencies before their
# users (depth first), skipping modules built into the kernel.
WANT="virtio_pci virtio_blk"
ORDER=$(awk -v want="$WANT" -v builtin="$MODDIR/modules.builtin" '
    function base(p,   b) { b = p; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b); gsub(/-/, "_", b); return b }
    function visit(p,   n, d, i) {
        if (p in seen) return
        seen[p] = 1
        n = split(deps[p], d, " ")
        for (i = 1; i <= n; i++) visit(d[i])
        print p
    }
    BEGIN { while ((getline l < builtin) > 0) inkernel[base(l)] = 1 }
    {
        p = $1; sub(/:$/, "", p)
        $1 = ""; deps[p] = $0; path[base(p)] = p
    }
    END {
        n = split(want, w, " ")
        for (i = 1; i <= n; i++) {
            if (w[i] in inkernel) continue
            if (!(w[i] in path)) { print "module " w[i] " not found" > "/dev/stderr"; exit 1 }
            visit(path[w[i]])
        }
    }' "$MODDIR/modules.dep")
: > "$ROOT/etc/ev-modules"
for rel in $ORDER; do
    name=$(basename "$rel")
    case "$name" in # busybox insmod takes uncompressed modules
        *.ko.xz)  xz -dc "$MODDIR/$rel" > "$ROOT/lib/modules-ev/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$ROOT/lib/modules-ev/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz)  gzip -dc "$MODDIR/$rel" > "$ROOT/lib/modules-ev/${name%.gz}"; name=${name%.gz} ;;
        *)        cp "$MODDIR/$rel" "$ROOT/lib/modules-ev/$name" ;;
    esac
    echo "$name" >> "$ROOT/etc/ev-modules"
done

# ---- the guest program -------------------------------------------------------------
install -m 0755 "$HERE/init" "$ROOT/init"
cp "$HERE/guest-lib.sh" "$ROOT/lib/ev/lib.sh"
cp "$HERE"/jobs/* "$ROOT/jobs/"
echo "$KVER" > "$ROOT/etc/ev-kver"

# ---- pack: sorted names, root owner, so equal inputs give equal archives ---------
( cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet ) |
    gzip -n -6 > "$STAGE/initramfs.cpio.gz"
mv "$STAGE/initramfs.cpio.gz" "$IMG"
# Only the newest image is kept (each is ~30 MiB).
for old in "$VMDIR"/initramfs-*.cpio.gz; do
    [ "$old" = "$IMG" ] || rm -f "$old"
done
ln -sfn "$(basename "$IMG")" "$VMDIR/initramfs.cpio.gz"
echo "built $IMG ($(du -h "$IMG" | cut -f1)); modules: $(tr '\n' ' ' < "$ROOT/etc/ev-modules")" >&2
emit
