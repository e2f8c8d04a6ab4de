# Helpers shared by the guest's /init and its shell jobs (jobs/*.sh); lives
# in the initramfs as /lib/ev/lib.sh. busybox sh (ash: `local` works).
#
# Every line the host parses starts with "@@EV " followed by an event name and
# space-separated key=value fields (values never contain spaces), except
# `serial` and `log`, whose free text runs to the end of the line. See
# tests/vm/README.md for the whole protocol.

# Seconds since the guest kernel started, e.g. 12.34.
ev_uptime() {
    read -r up _ < /proc/uptime
    echo "$up"
}

# ev_mark EVENT [key=value ...]: one marker line on the console.
ev_mark() {
    echo "@@EV $*"
}

# ev_check NAME pass|fail|skip [key=value ...]: the verdict of a guest-side check.
ev_check() {
    local name=$1 result=$2
    shift 2
    ev_mark check name="$name" result="$result" "$@"
}

# ev_log NAME FILE [MAXLINES]: copy a tool's output to the console, framed as
# `@@EV log name=NAME | text` lines, so the host keeps it in the summary.
ev_log() {
    sed -n "1,${3:-40}s/^/@@EV log name=$1 | /p" "$2"
}

# ev_md5 FILE-or-DEVICE SKIP_MIB COUNT_MIB: md5 of a MiB-aligned range, read
# with O_DIRECT so the answer comes from the device, not the page cache.
ev_md5() {
    dd if="$1" bs=1M skip="$2" count="$3" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1
}
