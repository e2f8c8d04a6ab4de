#!/bin/bash
# Install the Debian packages the edgevol guest harness needs, if missing.
#
#   install-deps.sh            # everything: initramfs inputs, QEMU, qemu-storage-daemon
#   install-deps.sh --check    # only report what is missing (exit 1 if anything is)
#
# Needs root (or sudo) to install. Packages:
#   busybox-static fio util-linux cpio gzip python3   initramfs contents and tools
#   linux-image-amd64                                  the guest kernel + its modules
#   qemu-system-x86                                    qemu-system-x86_64
#   qemu-storage-daemon                                Debian 12: qemu-system-common;
#                                                      QEMU >= 8 packaging: qemu-utils
#
# Debian 12's qemu-system-common (7.2) Breaks newer qemu-utils (8+, e.g. a
# backport), because qemu-storage-daemon moved between the two packages. When
# a newer qemu-utils is installed, this script installs the qemu-utils that
# matches qemu-system-common instead (a downgrade) so that qemu-img keeps
# working; without that, apt would remove qemu-utils altogether.
set -euo pipefail

CHECK_ONLY=0
[ "${1:-}" = --check ] && CHECK_ONLY=1

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
static_busybox() {
    [ -x /bin/busybox ] && LC_ALL=C file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' && return 0
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}
static_busybox || missing+=(busybox-static)
have fio || missing+=(fio)
have blkdiscard || missing+=(util-linux)
have cpio || missing+=(cpio)
have gzip || missing+=(gzip)
have python3 || missing+=(python3)
have file || missing+=(file)
ls /boot/vmlinuz-* >/dev/null 2>&1 && ls -d /lib/modules/*/kernel >/dev/null 2>&1 || missing+=(linux-image-amd64)
need_qemu=0
have qemu-system-x86_64 || need_qemu=1
have qemu-storage-daemon || need_qemu=1
[ $need_qemu = 1 ] && missing+=(qemu-system-x86)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ $CHECK_ONLY = 1 ]; then
    echo "missing packages: ${missing[*]}" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    have sudo || { echo "missing packages (${missing[*]}) and not root: install them" >&2; exit 1; }
    SUDO=sudo
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
extra=()
if [ $need_qemu = 1 ]; then
    common=$(apt-cache policy qemu-system-common | awk '/Candidate:/{print $2}')
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ -n "$common" ] && [ -n "$utils" ] && dpkg --compare-versions "$utils" gt "$common"; then
        echo "qemu-utils $utils is newer than qemu-system-common $common, which breaks it:" \
             "installing qemu-utils=$common alongside" >&2
        extra=(--allow-downgrades "qemu-utils=$common")
    fi
fi
# --no-install-recommends: qemu-system-x86 recommends a desktop's worth of GUI
# and codec libraries that a serial-console guest never uses.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" ${extra[@]+"${extra[@]}"} >/dev/null
still=$("$0" --check 2>&1) || { echo "after installing: $still" >&2; exit 1; }
