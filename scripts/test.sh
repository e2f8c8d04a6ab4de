#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + property + integration
# tests with real clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh, fio)
# and real-guest tests (a Debian kernel under QEMU TCG on edgevol's
# vhost-user-blk export, tests/vm). Installs the test tools it needs with
# apt-get when they are missing.
#
#   scripts/test.sh              # what CI runs
#   EDGEVOL_VM_TESTS=0 scripts/test.sh   # without the guest tests (~2-3 min less)
#   PROPTEST_CASES=2000 CRASH_ROUNDS=50 scripts/test.sh   # longer campaigns
#   scripts/long-campaigns.sh    # the long reliability campaigns (hours)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fio >/dev/null || need+=(fio)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v nbdsh >/dev/null || need+=(libnbd-bin)
/usr/bin/python3 -c 'import nbd' 2>/dev/null || need+=(python3-libnbd)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v qemu-io >/dev/null || need+=(qemu-utils)
[ -x /usr/sbin/smartctl ] || command -v smartctl >/dev/null || need+=(smartmontools)
# Foreign-data tests (crates/edgevol/tests/foreign.rs) make images with the
# real tools.
[ -x /usr/sbin/mkfs.ext4 ] || command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
[ -x /usr/sbin/mkfs.xfs ] || command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
[ -x /usr/sbin/sgdisk ] || command -v sgdisk >/dev/null || need+=(gdisk)
[ -x /usr/sbin/pvcreate ] || command -v pvcreate >/dev/null || need+=(lvm2)
[ -x /usr/sbin/cryptsetup ] || command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
[ -x /usr/sbin/mkswap ] || [ -x /sbin/mkswap ] || command -v mkswap >/dev/null || need+=(util-linux)
[ -x /usr/sbin/blkid ] || [ -x /sbin/blkid ] || command -v blkid >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing test tools: ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
fio --enghelp=nbd >/dev/null 2>&1 || { echo "this fio has no nbd engine (need Debian's fio >= 3.21)" >&2; exit 2; }

# The guest tests (crates/edgevol/tests/vm_*.rs) are compiled in only when
# EDGEVOL_VM_TESTS=1 at build time (crates/edgevol/build.rs); CI runs them.
# Their packages (QEMU, the Debian kernel, busybox-static, ...) are
# installed here, before anything runs, so that the whole suite sees one
# set of tools (install-deps.sh may replace a newer qemu-utils with the
# one matching qemu-system-x86).
export EDGEVOL_VM_TESTS=${EDGEVOL_VM_TESTS:-1}
if [ "$EDGEVOL_VM_TESTS" = 1 ]; then
    tests/vm/install-deps.sh
    tests/vm/build-initramfs.sh >/dev/null
fi

echo "== format and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== tests" >&2
t0=$(date +%s)
cargo test --workspace --quiet
echo "== tests took $(( $(date +%s) - t0 )) s" >&2
if [ "${EDGEVOL_FUZZ_SECONDS:-0}" -gt 0 ]; then
    echo "== fuzzing every target for $EDGEVOL_FUZZ_SECONDS s" >&2
    scripts/fuzz.sh "$EDGEVOL_FUZZ_SECONDS"
fi
echo "== all tests passed" >&2
