#!/usr/bin/env python3
"""Boot one edgevol test guest under QEMU (TCG) with one virtio disk, let its
/init run the requested jobs, and turn the "@@EV" console markers into a JSON
summary.

The disk is either
  --vhost-user SOCK   a vhost-user-blk backend listening on SOCK (edgevol,
                      qemu-storage-daemon, ...): -device vhost-user-blk-pci
  --image FILE        a plain image served by QEMU's own block layer:
                      -device virtio-blk-pci (the comparison baseline)
  --nbd SOCK:EXPORT   an NBD export on a Unix socket through QEMU's NBD
                      client: -device virtio-blk-pci (edgevol over NBD)

Examples:
  boot.py --vhost-user /run/ev/vol.sock --jobs verify,discard
  boot.py --vhost-user /run/ev/vol.sock --jobs verify --verify-only
  boot.py --image /var/tmp/disk.raw --jobs randrw4k --runtime 10

Exit status: 0 every job passed, 1 a job or check failed, 2 usage,
3 QEMU or guest boot failure (no /init, no disk, guest died), 124 timeout.
Writes into --out DIR: summary.json, serial.log, qemu.log, qemu-cmd.txt and
<job>.fio.json for every fio job. Standard library only.
"""

import argparse
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "@@EV "

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BOOT, EXIT_TIMEOUT = 0, 1, 2, 3, 124


def note(msg):
    print("[boot.py %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def vm_dir():
    return os.environ.get("EDGEVOL_VM_DIR", "/var/tmp/edgevol-vm")


# ---------------------------------------------------------------------------
# Inputs


def guest_images(args):
    """Kernel and initramfs: given, or from build-initramfs.sh (cached)."""
    if args.kernel and args.initrd:
        return args.kernel, args.initrd
    out = subprocess.run([os.path.join(HERE, "build-initramfs.sh")], stdout=subprocess.PIPE, check=True, text=True)
    vals = dict(l.split("=", 1) for l in out.stdout.splitlines() if l.startswith("EV_VM_") and "=" in l)
    return args.kernel or vals["EV_VM_KERNEL"], args.initrd or vals["EV_VM_INITRAMFS"]


def newc_archive(files):
    """An uncompressed newc cpio holding files {name: bytes}."""
    out = bytearray()

    def entry(ino, name, mode, data):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, data) in enumerate(sorted(files.items()), start=1):
        entry(i, name, 0o100644, data)
    entry(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def with_job_files(initrd, job_files, out_dir):
    """The initramfs plus an appended archive with extra job files. The kernel
    unpacks concatenated archives in order; one that follows a compressed
    archive must start 4-byte aligned."""
    files = {}
    for path in job_files:
        with open(path, "rb") as f:
            files["jobs/" + os.path.basename(path)] = f.read()
    combined = os.path.join(out_dir, "initrd-with-jobs.img")
    with open(initrd, "rb") as src, open(combined, "wb") as dst:
        base = src.read()
        dst.write(base)
        dst.write(b"\0" * (-len(base) % 4))
        dst.write(newc_archive(files))
    return combined


def qemu_version(qemu):
    out = subprocess.run([qemu, "--version"], stdout=subprocess.PIPE, text=True, check=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def qemu_command(args, kernel, initrd, serial_log):
    mem = "%dM" % args.mem_mib
    cmdline = ["console=ttyS0", "panic=-1", "ev.jobs=" + ",".join(args.jobs),
               "ev.verify_only=%d" % args.verify_only, "ev.runtime=%d" % args.runtime, "ev.ramp=%d" % args.ramp]
    if not args.verbose:
        cmdline += ["quiet", "loglevel=3"]
    if args.accel == "tcg":
        # Under TCG the kernel distrusts the emulated TSC and picks hpet, which
        # makes every clock_gettime() in fio an emulated MMIO access.
        cmdline += ["tsc=reliable", "clocksource=tsc"]
    if args.write_cache:
        cmdline.append("ev.write_cache=" + args.write_cache)
    if args.append:
        cmdline += args.append.split()
    if args.reboot:
        cmdline.append("ev.reboot=1")
    cmd = [args.qemu, "-nodefaults", "-no-user-config", "-nographic"] + ([] if args.reboot else ["-no-reboot"]) + [
           "-machine", "q35", "-accel", args.accel, "-cpu", "max" if args.accel == "tcg" else "host",
           "-smp", str(args.smp), "-m", mem,
           # a vhost-user backend maps guest RAM, so RAM must be a shareable fd;
           # the --image mode uses the same memory for a like-for-like comparison
           "-object", "memory-backend-memfd,id=mem,size=%s,share=on" % mem, "-numa", "node,memdev=mem",
           "-kernel", kernel, "-initrd", initrd, "-append", " ".join(cmdline),
           "-serial", "file:" + serial_log, "-monitor", "none"]
    if args.vhost_user:
        chardev = "socket,id=disk0,path=" + args.vhost_user
        if args.reconnect:
            # QEMU 9.2 replaced reconnect=<seconds> with reconnect-ms=<ms>
            chardev += ",reconnect-ms=1000" if qemu_version(args.qemu) >= (9, 2) else ",reconnect=1"
        cmd += ["-chardev", chardev,
                "-device", "vhost-user-blk-pci,chardev=disk0,num-queues=%d" % args.queues]
    elif args.nbd:
        sock, _, export = args.nbd.partition(":")
        cmd += ["-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=%s,export=%s,discard=unmap"
                % (sock, export),
                "-device", "virtio-blk-pci,drive=disk0,num-queues=%d,serial=%s" % (args.queues, args.serial)]
    else:
        direct = "on" if args.cache == "none" else "off"
        cmd += ["-blockdev", "driver=file,node-name=file0,filename=%s,discard=unmap,cache.direct=%s"
                % (args.image, direct),
                "-blockdev", "driver=%s,node-name=disk0,file=file0,discard=unmap" % args.format,
                "-device", "virtio-blk-pci,drive=disk0,num-queues=%d,serial=%s" % (args.queues, args.serial)]
    return cmd + args.qemu_arg


def default_timeout(args):
    rate = args.runtime + args.ramp + 60
    per_job = {"verify": 90, "reverify": 60, "discard": 60, "restart": 120,
               "randrw4k": rate, "randread4k": rate, "randwrite4k": rate}
    return 150 + sum(per_job.get(j, 180) for j in args.jobs)


# ---------------------------------------------------------------------------
# Markers


def parse_value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_fields(words):
    return {k: parse_value(v) for k, _, v in (w.partition("=") for w in words)}


class Console:
    """Incremental parser of the guest's serial log."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.init = None
        self.boots = 0
        self.device = None
        self.serial = None
        self.jobs = []  # in the order they ran
        self.checks = {}
        self.infos = []
        self.errors = []
        self.all_done = None
        self._json_job = None
        self._json_lines = []
        self._partial = ""
        # Host seconds since QEMU started, as of the console data being fed
        # (set by the loop): jobs get host times beside the guest's own, so
        # a guest clock that jumped (a starved TCG vCPU) shows.
        self.now = 0.0

    def job(self, name):
        for j in reversed(self.jobs):
            if j["name"] == name:
                return j
        j = {"name": name, "kind": None, "rc": None}
        self.jobs.append(j)
        return j

    def feed(self, data):
        text = self._partial + data
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.line(line.replace("\r", ""))

    def line(self, line):
        at = line.find(MARK)
        if at < 0:
            if self._json_job is not None:
                self._json_lines.append(line)
            return
        rest = line[at + len(MARK):]
        event, _, tail = rest.partition(" ")
        if event == "serial":
            self.serial = tail.strip()
            return
        if event == "log":
            name, _, text = tail.partition(" | ")
            self.job(name.partition("=")[2]).setdefault("log", []).append(text)
            return
        f = parse_fields(tail.split())
        if event == "init":
            self.init = f
            self.boots += 1
            note("guest /init running (guest uptime %ss)" % f.get("t"))
        elif event == "device":
            self.device = f
            note("disk: %s" % tail)
        elif event == "job-begin":
            j = {"name": f["name"], "kind": f.get("kind"), "verify_only": f.get("verify_only") == 1,
                 "rc": None, "begin_t": f.get("t"), "host_begin_s": round(self.now, 2)}
            self.jobs.append(j)
            note("job %s started" % f["name"])
        elif event == "job-end":
            j = self.job(f["name"])
            j["rc"] = f.get("rc")
            j["end_t"] = f.get("t")
            if isinstance(j.get("begin_t"), float) and isinstance(j.get("end_t"), float):
                j["secs"] = round(j["end_t"] - j["begin_t"], 2)
            if "host_begin_s" in j:
                j["host_secs"] = round(self.now - j["host_begin_s"], 2)
            note("job %s finished: rc=%s in %ss" % (f["name"], j["rc"], j.get("secs")))
        elif event == "fio-json-begin":
            self._json_job, self._json_lines = f["name"], []
        elif event == "fio-json-end":
            self.fio_json(self._json_job, "\n".join(self._json_lines))
            self._json_job = None
        elif event == "check":
            name = f.pop("name")
            self.checks[name] = f
            if self.jobs:
                self.jobs[-1].setdefault("checks", []).append(name)
            note("check %s: %s" % (name, f.get("result")))
        elif event == "info":
            self.infos.append(f)
        elif event == "error":
            self.errors.append(f)
            note("guest error: %s" % tail)
        elif event == "all-done":
            self.all_done = f

    def fio_json(self, name, text):
        j = self.job(name)
        try:
            # fio may print notes ahead of the document
            doc = json.loads(text[text.index("{"):text.rindex("}") + 1])
        except ValueError as e:
            j["fio"] = None
            j["fio_error"] = "unparseable fio JSON: %s" % e
            with open(os.path.join(self.out_dir, name + ".fio.json.bad"), "w") as f:
                f.write(text)
            return
        j["fio"] = doc
        j["fio_totals"] = fio_totals(doc)
        with open(os.path.join(self.out_dir, name + ".fio.json"), "w") as f:
            json.dump(doc, f, indent=1)


def fio_totals(doc):
    """Sums over fio's jobs: errors, bytes, IOPS and bandwidth per direction."""
    t = {"errors": 0, "jobs": 0}
    for job in doc.get("jobs", []):
        t["jobs"] += 1
        t["errors"] += 1 if job.get("error") else 0
        for d in ("read", "write"):
            s = job.get(d, {})
            t[d + "_bytes"] = t.get(d + "_bytes", 0) + s.get("io_bytes", 0)
            t[d + "_iops"] = round(t.get(d + "_iops", 0) + s.get("iops", 0), 1)
            t[d + "_kib_s"] = t.get(d + "_kib_s", 0) + s.get("bw", 0)
    return t


# ---------------------------------------------------------------------------
# Running QEMU


def die_with_us():
    """In the child: SIGKILL when boot.py dies, so no guest outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop(proc, grace=5.0):
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


def run(args):
    out = os.path.abspath(args.out or os.path.join(
        vm_dir(), "runs", time.strftime("%Y%m%d-%H%M%S") + "-%d" % os.getpid()))
    os.makedirs(out, exist_ok=True)
    serial_log = os.path.join(out, "serial.log")
    qemu_log = os.path.join(out, "qemu.log")
    for p in (serial_log,):
        if os.path.exists(p):
            os.unlink(p)

    kernel, initrd = guest_images(args)
    if args.job_file:
        initrd = with_job_files(initrd, args.job_file, out)
        for p in args.job_file:
            name = re.sub(r"\.(fio|sh)$", "", os.path.basename(p))
            if name not in args.jobs:
                args.jobs.append(name)
    timeout = args.timeout or default_timeout(args)
    cmd = qemu_command(args, kernel, initrd, serial_log)
    with open(os.path.join(out, "qemu-cmd.txt"), "w") as f:
        f.write(" ".join(shlex.quote(c) for c in cmd) + "\n")

    summary = {"mode": "vhost-user" if args.vhost_user else "nbd" if args.nbd else "image",
               "disk": args.vhost_user or args.nbd or args.image, "jobs_requested": args.jobs,
               "verify_only": bool(args.verify_only), "queues": args.queues, "smp": args.smp,
               "accel": args.accel, "timeout_s": timeout, "out_dir": out, "serial_log": serial_log,
               "qemu_cmd": cmd}

    if args.vhost_user:
        t0 = time.time()
        while not os.path.exists(args.vhost_user):
            if time.time() - t0 > args.socket_wait:
                note("no vhost-user socket at %s after %ss" % (args.vhost_user, args.socket_wait))
                return finish(summary, None, EXIT_BOOT, "no-socket", 0.0)
            time.sleep(0.1)

    console = Console(out)
    start = time.time()
    with open(qemu_log, "wb") as qlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_us)
    note("qemu pid %d; serial -> %s; timeout %ss" % (proc.pid, serial_log, timeout))

    def on_signal(signum, _frame):
        stop(proc)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pos, timed_out, host_t = 0, False, {}
    done_at = None
    while True:
        exited = proc.poll() is not None
        try:
            with open(serial_log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            console.now = time.time() - start
            console.feed(chunk.decode("utf-8", "replace"))
        except FileNotFoundError:
            pass
        now = time.time() - start
        if console.init and "init" not in host_t:
            host_t["init"] = round(now, 2)
        if console.device and "device" not in host_t:
            host_t["device"] = round(now, 2)
        if console.all_done and done_at is None:
            done_at = now
            host_t["all_done"] = round(now, 2)
        if exited:
            break
        if done_at is not None and now - done_at > 20:
            note("guest finished but QEMU did not exit; stopping it")
            stop(proc)
            break
        if now > timeout:
            note("TIMEOUT after %.0fs; stopping QEMU" % now)
            timed_out = True
            stop(proc)
            break
        time.sleep(0.1)
    proc.wait()
    if console._partial:
        console.feed("\n")
    wall = time.time() - start
    summary["host_times_s"] = host_t
    summary["qemu_rc"] = proc.returncode

    summary.update({"guest": console.init, "boots": console.boots, "device": console.device, "serial": console.serial,
                    "jobs": console.jobs, "checks": console.checks, "infos": console.infos,
                    "errors": console.errors, "all_done": console.all_done})
    if timed_out:
        return finish(summary, console, EXIT_TIMEOUT, "timeout", wall)
    if console.init is None:
        return finish(summary, console, EXIT_BOOT, "guest-never-reached-init", wall)
    if console.all_done is None:
        return finish(summary, console, EXIT_BOOT, "guest-died", wall)
    if console.device is None:
        return finish(summary, console, EXIT_BOOT, "no-disk", wall)
    problems = []
    for name in args.jobs:
        ran = [j for j in console.jobs if j["name"] == name]
        if not ran:
            problems.append("%s: did not run" % name)
            continue
        j = ran[-1]
        if j.get("rc") != 0:
            problems.append("%s: rc=%s" % (name, j.get("rc")))
        if j.get("kind") == "fio" and not j.get("fio"):
            problems.append("%s: %s" % (name, j.get("fio_error", "no fio JSON")))
        elif j.get("kind") == "fio" and j["fio_totals"]["errors"]:
            problems.append("%s: fio reported errors" % name)
    for name, c in console.checks.items():
        if c.get("result") == "fail":
            problems.append("check %s failed (%s)" % (name, c.get("reason")))
    if console.all_done.get("rc") != 0:
        problems.append("guest all-done rc=%s" % console.all_done.get("rc"))
    summary["problems"] = problems
    if problems:
        return finish(summary, console, EXIT_FAILED, "; ".join(problems), wall)
    return finish(summary, console, EXIT_OK, "ok", wall)


def finish(summary, console, code, reason, wall):
    summary["exit_code"] = code
    summary["ok"] = code == EXIT_OK
    summary["reason"] = reason
    summary["wall_s"] = round(wall, 2)
    path = os.path.join(summary["out_dir"], "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    # a compact copy without the fio documents, for people
    brief = dict(summary, jobs=[{k: v for k, v in j.items() if k != "fio"} for j in summary.get("jobs", [])])
    with open(os.path.join(summary["out_dir"], "summary-brief.json"), "w") as f:
        json.dump(brief, f, indent=1)
    if code != EXIT_OK:
        note("FAILED (%s): %s" % (code, reason))
        if code == EXIT_BOOT or code == EXIT_TIMEOUT:
            note("serial log tail:\n" + tail(summary["serial_log"]))
            note("qemu log tail:\n" + tail(os.path.join(summary["out_dir"], "qemu.log")))
    else:
        note("OK in %.1fs" % wall)
    note("summary: " + path)
    return code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    disk = ap.add_mutually_exclusive_group(required=True)
    disk.add_argument("--vhost-user", metavar="SOCK", help="vhost-user-blk backend socket (QEMU connects)")
    disk.add_argument("--image", metavar="FILE", help="serve FILE through QEMU's block layer (virtio-blk-pci)")
    disk.add_argument("--nbd", metavar="SOCK:EXPORT",
                      help="an NBD export on a Unix socket through QEMU's NBD client (virtio-blk-pci)")
    ap.add_argument("--jobs", default="verify,discard",
                    help="comma-separated job names (jobs/NAME.fio or NAME.sh); 'none' boots only")
    ap.add_argument("--job-file", action="append", default=[], metavar="FILE",
                    help="extra job file (NAME.fio or NAME.sh), shipped in an appended cpio and run")
    ap.add_argument("--verify-only", action="store_true", help="verify job only re-checks an earlier boot's data")
    ap.add_argument("--queues", type=int, default=2, help="virtqueues of the disk (default 2)")
    ap.add_argument("--smp", type=int, default=None, help="guest vCPUs (default: max(queues, 1)); "
                    "virtio-blk uses at most one queue per vCPU")
    ap.add_argument("--mem-mib", type=int, default=512)
    ap.add_argument("--reconnect", action="store_true",
                    help="vhost-user: let QEMU reconnect when the backend restarts")
    ap.add_argument("--runtime", type=int, default=8, help="seconds of the time-based jobs (randrw4k)")
    ap.add_argument("--ramp", type=int, default=1, help="warm-up seconds of the time-based jobs")
    ap.add_argument("--write-cache", choices=["write_back", "write_through"],
                    help="switch the disk's cache mode (the device's wce) before the jobs")
    ap.add_argument("--format", choices=["raw", "qcow2"], default="raw", help="--image format")
    ap.add_argument("--cache", choices=["none", "writeback"], default="writeback",
                    help="--image host cache: none = O_DIRECT")
    ap.add_argument("--serial", default="ev-image", help="--image/--nbd: the disk's virtio-blk serial")
    ap.add_argument("--timeout", type=float, default=None, help="overall limit in seconds (default: from the jobs)")
    ap.add_argument("--socket-wait", type=float, default=30, help="seconds to wait for the vhost-user socket")
    ap.add_argument("--out", default=None, help="output directory (default $EDGEVOL_VM_DIR/runs/...)")
    ap.add_argument("--kernel", default=None)
    ap.add_argument("--initrd", default=None)
    ap.add_argument("--accel", default="tcg", help="tcg (default; the KVM here cannot run a guest)")
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument (repeatable)")
    ap.add_argument("--verbose", action="store_true", help="keep kernel boot messages on the console")
    ap.add_argument("--reboot", action="store_true",
                    help="reboot the guest once (ev.reboot=1): jobs, reboot (device reset), jobs again verify-only")
    args = ap.parse_args()
    args.jobs = [j for j in args.jobs.split(",") if j and j != "none"]
    args.smp = args.smp or max(args.queues, 1)
    if args.image and not os.path.exists(args.image):
        ap.error("no image %s" % args.image)
    try:
        return run(args)
    except subprocess.CalledProcessError as e:
        note("%s failed with %s" % (e.cmd, e.returncode))
        return EXIT_BOOT


if __name__ == "__main__":
    sys.exit(main())
