# Discard and write-zeroes checks (a shell job, run by /init with $EV_DEV set).
#
# discard:      fill 160-168 MiB with a known text pattern (O_DIRECT), read it
#               back (must match), BLKDISCARD it (util-linux blkdiscard), read it
#               back: it must read as zeroes.
# write-zeroes: the same on 176-184 MiB with BLKZEROOUT (blkdiscard -z).
#
# A virtio-blk device is free to return old data after a discard; the disks
# the harness tests (a thin edgevol volume, qemu-storage-daemon over a file
# with discard=unmap) deallocate the range, so it must read back as zeroes.
# blkdiscard is called by its full path: busybox sh runs its own applets
# (busybox blkdiscard has no -z) ahead of anything in PATH.
# Each check prints `@@EV check name=... result=pass|fail ...`; the job's exit
# status is the number of failed checks.
. /lib/ev/lib.sh

MIB=1048576
LEN_MIB=8
size=$(($(cat "/sys/block/$EV_DEVNAME/size") * 512))
q=/sys/block/$EV_DEVNAME/queue

dd if=/dev/zero bs=1M count=$LEN_MIB 2>/dev/null > /tmp/zero.bin
zero_md5=$(md5sum < /tmp/zero.bin | cut -d' ' -f1)
# The pattern: a repeated text line (nothing in it is zero).
yes "edgevol guest discard check 0123456789abcdef" | head -c $((LEN_MIB * MIB)) > /tmp/pattern.bin
pattern_md5=$(md5sum < /tmp/pattern.bin | cut -d' ' -f1)

failed=0

# check NAME OFFSET_MIB TOOL-ARGS...: fill, read back, run the tool, read back.
check() {
    local name=$1 off=$2 before after rc what
    shift 2
    if [ $(((off + LEN_MIB) * MIB)) -gt "$size" ]; then
        ev_check "$name" fail reason=disk-too-small need_bytes=$(((off + LEN_MIB) * MIB)) size_bytes="$size"
        failed=$((failed + 1))
        return
    fi
    if ! dd if=/tmp/pattern.bin of="$EV_DEV" bs=1M seek="$off" oflag=direct conv=notrunc,fsync 2> "/tmp/$name.err"; then
        ev_check "$name" fail reason=pattern-write-failed offset_mib="$off"
        ev_log "$name" "/tmp/$name.err"
        failed=$((failed + 1))
        return
    fi
    before=$(ev_md5 "$EV_DEV" "$off" $LEN_MIB)
    if [ "$before" != "$pattern_md5" ]; then
        # the pattern did not even read back: no point discarding
        ev_check "$name" fail reason=pattern-readback-mismatch offset_mib="$off" md5_before="$before" pattern_md5="$pattern_md5"
        failed=$((failed + 1))
        return
    fi
    /usr/sbin/blkdiscard -f "$@" -o $((off * MIB)) -l $((LEN_MIB * MIB)) "$EV_DEV" 2> "/tmp/$name.err"
    rc=$?
    after=$(ev_md5 "$EV_DEV" "$off" $LEN_MIB)
    if [ $rc -ne 0 ]; then
        ev_check "$name" fail reason=blkdiscard-failed blkdiscard_rc=$rc offset_mib="$off" length_mib=$LEN_MIB
        ev_log "$name" "/tmp/$name.err"
        failed=$((failed + 1))
    elif [ "$after" != "$zero_md5" ]; then
        if [ "$after" = "$pattern_md5" ]; then what=pattern-still-there; else what=not-zero; fi
        ev_check "$name" fail reason=$what offset_mib="$off" length_mib=$LEN_MIB md5_after="$after" zero_md5="$zero_md5"
        failed=$((failed + 1))
    else
        ev_check "$name" pass offset_mib="$off" length_mib=$LEN_MIB md5_before="$before" md5_after="$after"
    fi
}

ev_mark info what=discard-limits discard_max_bytes="$(cat $q/discard_max_bytes)" \
    discard_granularity="$(cat $q/discard_granularity)" write_zeroes_max_bytes="$(cat $q/write_zeroes_max_bytes)"
check discard 160
# With write_zeroes_max_bytes=0 the kernel writes zero pages itself (no
# offload), so this passes on any writable disk; the device marker tells which.
check write-zeroes 176 -z
exit $failed
