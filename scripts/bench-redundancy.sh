#!/bin/bash
# Redundancy measurements: write throughput per layout, scrub rate,
# resilver time for a 2 GiB volume, client p99 with and without scrub.
set -u
EV=${EDGEVOL:-$(dirname "$0")/../target/release/edgevol}
D=${SCRATCH:-/var/tmp/edgevol-raidbench}; rm -rf $D; mkdir -p $D
$EV serve --data-dir $D/data --nbd-listen none --nbd-socket $D/nbd.sock >$D/log 2>&1 &
SP=$!; sleep 1
A="$EV --api-socket $D/data/api.sock"
fioj() { # name uri args...
  local n=$1 u=$2; shift 2
  fio --name=$n --ioengine=nbd --uri="$u" --output-format=json --eta=never "$@" > $D/$n.json 2>/dev/null
}
bw() { python3 -c "import json,sys;t=open('$1').read();j=json.loads(t[t.index('{'):])['jobs'][0]['write'];print(f\"{j['bw']/1024:.0f} MiB/s {j['iops']:.0f} IOPS p99 {j['clat_ns']['percentile']['99.000000']/1000:.0f}us\")"; }
rd() { python3 -c "import json,sys;t=open('$1').read();j=json.loads(t[t.index('{'):])['jobs'][0]['read'];print(f\"{j['iops']:.0f} IOPS p50 {j['clat_ns']['percentile']['50.000000']/1000:.0f}us p99 {j['clat_ns']['percentile']['99.000000']/1000:.0f}us p99.9 {j['clat_ns']['percentile']['99.900000']/1000:.0f}us\")"; }
for L in ${LAYOUTS:-single mirror parity1}; do  # LAYOUTS=parity1: only what the scrub and resilver measurements need
  case $L in single) DEV="$D/$L-0.img";; mirror) DEV="mirror $D/$L-0.img $D/$L-1.img";; parity1) DEV="parity1 $D/$L-0.img $D/$L-1.img $D/$L-2.img";; esac
  $A pool create $L $DEV --size 3G >/dev/null || exit 1
  $A volume create $L/v --size 2G -o compression=off >/dev/null
  U="nbd+unix:///$L/v?socket=$D/nbd.sock"
  fioj $L-seq $U --rw=write --bs=1M --iodepth=8 --size=2G
  fioj $L-rand $U --rw=randwrite --bs=4k --iodepth=16 --numjobs=4 --group_reporting --time_based --runtime=10 --size=2G
  echo "$L seqwrite 1M QD8: $(bw $D/$L-seq.json); randwrite 4k 4x16: $(bw $D/$L-rand.json)"
done
L=parity1; U="nbd+unix:///$L/v?socket=$D/nbd.sock"
fioj base-read $U --rw=randread --bs=4k --iodepth=4 --time_based --runtime=10 --size=2G
echo "randread 4k QD4 without scrub: $(rd $D/base-read.json)"
$A pool scrub $L >/dev/null
fioj scrub-read $U --rw=randread --bs=4k --iodepth=4 --time_based --runtime=10 --size=2G
echo "randread 4k QD4 during scrub: $(rd $D/scrub-read.json)"
while $A --json pool status $L | python3 -c "import json,sys;s=json.load(sys.stdin)['scrub'];sys.exit(0 if s['state']=='running' else 1)"; do sleep 1; done
$A --json pool status $L | python3 -c "import json,sys;s=json.load(sys.stdin)['scrub'];print(f\"scrub: {s['done_bytes']/2**20:.0f} MiB in {s['ended']-s['started']}s, rate {s['rate']/2**20:.0f} MiB/s, repaired {s['repaired_bytes']}\")"
T0=$(date +%s.%N)
$A pool replace $L $D/$L-1.img $D/$L-new.img >/dev/null
while $A --json pool status $L | python3 -c "import json,sys;s=json.load(sys.stdin)['resilver'];sys.exit(0 if s['state']=='running' else 1)"; do sleep 0.2; done
T1=$(date +%s.%N)
$A --json pool status $L | python3 -c "import json,sys;s=json.load(sys.stdin);r=s['resilver'];print(f\"resilver: {r['done_bytes']/2**20:.0f} MiB, state {r['state']}, pool {s['state']}\")"
echo "resilver wall time: $(python3 -c "print(f'{$T1-$T0:.1f}s')")"
$A pool check $L | head -2
kill $SP; wait
