//! Crash consistency over NBD: a Python + libnbd writer keeps writing,
//! trimming and zeroing 4 KiB blocks with self-describing content and
//! flushing every few batches; the daemon is killed with SIGKILL at a random
//! moment, restarted on the same data directory, and every block must hold
//! its last flushed value or a value written later (never garbage, never
//! another block's content). Rounds: `CRASH_ROUNDS` (default 5) per
//! campaign; `EDGEVOL_TEST_SEED` replays a seed. Campaigns: a 1 GiB pool; a
//! small pool (80 MiB) where the segment cleaner must run; and one that also
//! creates and destroys snapshots while writing (acknowledged snapshot
//! operations must survive the kill, snapshots hold only valid blocks).
//! Then a clean stop (SIGTERM, SIGINT) must restart without log replay.
//!
//! Block content for block `b` at generation `g` (generations are unique
//! across the whole test): 256 units of 16 bytes, unit `i` being
//! `(b + (i << 48), g ^ (i * 0x9E3779B97F4A7C15))` as two little-endian u64;
//! unit 0 is thus `(b, g)`, and the rest makes the whole block checkable.
//!
//! The writer's log (one line per event, appended with O_APPEND):
//! `S` connected (two connections: the export claims multi-conn, so a flush
//! on either covers both) and flushed (what recovery produced is durable);
//! `W b g` / `Z b g` before sending a write / a trim or write-zeroes of
//! block `b` at generation `g`; `U g` after FUA write `g` completed;
//! `D g` after a flush returned that followed the completion of every
//! operation up to `g` (the log is fsync'd then). Together, `D` and `U`
//! lines give the flushed generation of every block.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BS: u64 = 4096;
const NBLOCKS: u64 = 4096; // 16 MiB of the volume
const MULT: u64 = 0x9E37_79B9_7F4A_7C15;

const WRITER: &str = r#"
import nbd, os, sys, struct, random
uri, logpath = sys.argv[1], sys.argv[2]
nblocks, gen, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
BS = 4096
MULT = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
def content(b, g):
    return bytearray(b"".join(struct.pack("<QQ", (b + (i << 48)) & MASK, (g ^ (i * MULT)) & MASK) for i in range(256)))
rng = random.Random(seed)
log = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def L(s):
    os.write(log, (s + "\n").encode())
# Two connections (the export advertises multi-conn: a flush on either
# makes the completed writes of both durable).
hs = []
for _ in range(2):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
hs[0].flush()
L("S")
os.fsync(log)
while True:
    n = rng.randint(1, 24)
    blocks = rng.sample(range(nblocks), n)
    cmds = []
    for b in blocks:
        gen += 1
        r = rng.random()
        off = b * BS
        h = rng.choice(hs)
        if r < 0.03:
            L("Z %d %d" % (b, gen))
            cmds.append((h, h.aio_trim(BS, off), None, None))
        elif r < 0.06:
            L("Z %d %d" % (b, gen))
            cmds.append((h, h.aio_zero(BS, off), None, None))
        else:
            fua = r > 0.95
            L("W %d %d" % (b, gen))
            buf = nbd.Buffer.from_bytearray(content(b, gen))
            c = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if fua else 0)
            cmds.append((h, c, buf, gen if fua else None))
    for h in hs:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    for h, c, _, fua_gen in cmds:
        if not h.aio_command_completed(c):
            raise SystemExit("command not completed")
        if fua_gen is not None:
            L("U %d" % fua_gen)
    if rng.random() < 0.25:
        rng.choice(hs).flush()
        L("D %d" % gen)
        os.fsync(log)
"#;

fn content(b: u64, g: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BS as usize);
    for i in 0..256u64 {
        v.extend_from_slice(&(b.wrapping_add(i << 48)).to_le_bytes());
        v.extend_from_slice(&(g ^ i.wrapping_mul(MULT)).to_le_bytes());
    }
    v
}

/// What a block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Zero,
    Data(u64),
}

#[derive(Clone, Copy, Debug)]
struct Op {
    gen: u64,
    val: Val,
}

/// Parsed writer log of one round.
#[derive(Default)]
struct Round {
    started: bool,
    ops: BTreeMap<u64, Vec<Op>>, // block -> ops in generation order
    flushed_upto: u64,
    fua: BTreeSet<u64>,
    flushes: usize,
    max_gen: u64,
}

fn parse_log(text: &str) -> Round {
    let mut r = Round::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> u64 {
            f[i].parse()
                .unwrap_or_else(|e| panic!("bad log line {line:?}: {e}"))
        };
        match f[0] {
            "S" => r.started = true,
            "W" | "Z" => {
                let (b, g) = (num(1), num(2));
                let val = if f[0] == "W" { Val::Data(g) } else { Val::Zero };
                r.ops.entry(b).or_default().push(Op { gen: g, val });
                r.max_gen = r.max_gen.max(g);
            }
            "U" => {
                r.fua.insert(num(1));
            }
            "D" => {
                r.flushed_upto = r.flushed_upto.max(num(1));
                r.flushes += 1;
            }
            // A torn last line cannot happen (one write(2) per line), but be
            // strict about anything unknown.
            _ => panic!("bad log line {line:?}"),
        }
    }
    r
}

/// Decode a block read back: zero, a valid (block, generation), or garbage.
fn decode(b: u64, buf: &[u8]) -> Result<Val, String> {
    if buf.iter().all(|&x| x == 0) {
        return Ok(Val::Zero);
    }
    let rb = u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes"));
    let rg = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if rb < NBLOCKS && content(rb, rg) == buf {
        if rb != b {
            return Err(format!("holds block {rb}'s content (generation {rg})"));
        }
        return Ok(Val::Data(rg));
    }
    let nonzero = buf.iter().filter(|&&x| x != 0).count();
    Err(format!(
        "holds garbage (first 16 bytes {:02x?}, {nonzero} non-zero bytes)",
        &buf[..16]
    ))
}

fn spawn_writer(d: &Daemon, log: &std::path::Path, gen: u64, seed: u64) -> Child {
    let py = python_nbd();
    Command::new(py)
        .arg("-c")
        .arg(WRITER)
        .arg(d.uri("p/v"))
        .arg(log)
        .arg(NBLOCKS.to_string())
        .arg(gen.to_string())
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the python writer")
}

fn count_flushes(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("D "))
        .count()
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn read_region(d: &Daemon) -> Vec<u8> {
    nbd_read(&d.uri("p/v"), 0, NBLOCKS * BS)
}

fn rounds() -> u32 {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

/// Check every block of `data` against the writer's log `r` and the state
/// before the round (`base`, updated to what was read). Returns the number
/// of blocks that changed.
fn verify_round(round: u32, seed: u64, r: &Round, base: &mut [Val], data: &[u8]) -> usize {
    let mut bad = Vec::new();
    let mut changed = 0;
    for b in 0..NBLOCKS {
        let buf = &data[(b * BS) as usize..((b + 1) * BS) as usize];
        let ops = r.ops.get(&b).map(Vec::as_slice).unwrap_or(&[]);
        // The newest operation known durable (flush or FUA), if any.
        let durable = ops
            .iter()
            .rposition(|o| o.gen <= r.flushed_upto || r.fua.contains(&o.gen));
        let (floor, allowed): (Option<Val>, &[Op]) = match durable {
            Some(i) => (None, &ops[i..]),
            None => (Some(base[b as usize]), ops),
        };
        let got = match decode(b, buf) {
            Ok(v) => v,
            Err(why) => {
                bad.push(format!("block {b} {why}"));
                continue;
            }
        };
        let ok = floor == Some(got) || allowed.iter().any(|o| o.val == got);
        if !ok {
            let durable = match (durable, floor) {
                (Some(i), _) => format!("{:?} flushed at generation {}", ops[i].val, ops[i].gen),
                (None, Some(v)) => format!("{v:?} from before this round"),
                (None, None) => "nothing".to_string(),
            };
            bad.push(format!(
                "block {b} reads {got:?}; durable: {durable}; operations since: {:?}",
                allowed.iter().map(|o| (o.gen, o.val)).collect::<Vec<_>>()
            ));
            continue;
        }
        if got != base[b as usize] {
            changed += 1;
        }
        base[b as usize] = got;
    }
    assert!(
        bad.is_empty(),
        "round {round} (seed {seed}): {} blocks violate the flush guarantee, e.g.:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    changed
}

/// What the snapshot churn thread saw acknowledged before the kill.
#[derive(Default)]
struct Churn {
    /// Snapshots whose `create` returned success (and no destroy was tried).
    created: Vec<String>,
    /// Snapshots whose `destroy` returned success.
    destroyed: Vec<String>,
    /// Snapshots whose create or destroy was in flight or failed: either way.
    unknown: Vec<String>,
}

/// Create and destroy snapshots of p/v until `stop` (or the daemon dies).
fn churn(api: &std::path::Path, round: u32, stop: &std::sync::atomic::AtomicBool) -> Churn {
    use std::sync::atomic::Ordering;
    let mut c = Churn::default();
    let cli = |args: &[&str]| -> bool {
        Command::new(bin())
            .arg("--api-socket")
            .arg(api)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let name = format!("r{round}-{i}");
        if cli(&["snapshot", "create", &format!("p/v@{name}")]) {
            c.created.push(name);
        } else {
            c.unknown.push(name);
            if !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if i % 3 == 0 && c.created.len() > 2 {
            let old = c.created.remove(0);
            if cli(&["snapshot", "destroy", &format!("p/v@{old}")]) {
                c.destroyed.push(old);
            } else {
                c.unknown.push(old);
            }
        }
    }
    c
}

/// After a restart: acknowledged snapshot creations and destructions
/// survived, and the snapshots hold only valid blocks.
fn verify_churn(d: &Daemon, round: u32, c: &Churn, max_gen: u64) {
    let list = d.json(&["snapshot", "list", "p/v"]);
    let names: BTreeSet<String> = list["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect();
    for n in &c.created {
        assert!(
            names.contains(n),
            "round {round}: snapshot {n} was created (acknowledged) but is gone: {names:?}"
        );
    }
    for n in &c.destroyed {
        assert!(
            !names.contains(n),
            "round {round}: snapshot {n} was destroyed (acknowledged) but is back"
        );
    }
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("r{round}-")))
        .collect();
    for n in &ours {
        assert!(
            c.created.contains(n) || c.unknown.contains(n),
            "round {round}: unknown snapshot {n} appeared"
        );
    }
    // The newest few snapshots: every block is zero or a valid block of
    // its own index, from a generation that was written.
    let mut newest: Vec<&String> = c.created.iter().rev().take(3).collect();
    newest.extend(c.unknown.iter().filter(|n| names.contains(*n)).take(2));
    for n in newest {
        let data = nbd_read(&d.uri(&format!("p/v@{n}")), 0, NBLOCKS * BS);
        for b in 0..NBLOCKS {
            match decode(b, &data[(b * BS) as usize..((b + 1) * BS) as usize]) {
                Ok(Val::Zero) => {}
                Ok(Val::Data(g)) => assert!(
                    g <= max_gen,
                    "round {round}: snapshot {n} block {b} from the future ({g})"
                ),
                Err(why) => panic!("round {round}: snapshot {n}: block {b} {why}"),
            }
        }
    }
    // Destroy them all (after recovery, destroying works too).
    for n in &names {
        d.ok(&["snapshot", "destroy", &format!("p/v@{n}")]);
    }
}

/// The crash campaign; with `snapshots`, a thread creates and destroys
/// snapshots while the writer runs.
fn campaign(test: &str, snapshots: bool, pool_size: &str) {
    let rounds = rounds();
    let seed = seed(test);
    let mut rng = Rng::new(seed);
    python_nbd();

    let mut d = Daemon::start();
    d.create_pool("p", pool_size, Some("1M"));
    d.create_volume("p/v", 64 * MIB);

    // What every block durably holds after the previous verification.
    let mut base: Vec<Val> = vec![Val::Zero; NBLOCKS as usize];
    let mut gen = 0u64;
    let mut recovered_rounds = 0;
    for round in 1..=rounds {
        let log = d.path(&format!("writer-{round}.log"));
        let mut w = spawn_writer(&d, &log, gen, rng.next_u64());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let api = d.api.clone();

        let (r, ch) = std::thread::scope(|sc| {
            let churner = snapshots.then(|| sc.spawn(|| churn(&api, round, &stop)));
            // Let it flush a few times, then kill at a random moment.
            let want_flushes = rng.range(1, 6) as usize;
            let end = Instant::now() + Duration::from_secs(60);
            while count_flushes(&log) < want_flushes {
                if let Ok(Some(s)) = w.try_wait() {
                    panic!(
                        "round {round}: the writer exited early ({s}):\n{}",
                        stderr_of(&mut w)
                    );
                }
                if Instant::now() > end {
                    let st = d.cli(&["--json", "pool", "status", "p"]);
                    panic!(
                        "round {round}: the writer made no progress in 60 s (writes hang); pool status: {}",
                        String::from_utf8_lossy(&st.stdout)
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
            if let Ok(Some(s)) = w.try_wait() {
                panic!(
                    "round {round}: the writer stopped before the kill ({s}):\n{}",
                    stderr_of(&mut w)
                );
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            d.kill9();
            let ch = churner.map(|t| t.join().expect("churn thread"));
            // The writer now fails on its connection; make sure it is gone
            // before reading its log.
            let end = Instant::now() + Duration::from_secs(20);
            while matches!(w.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(w.try_wait(), Ok(None)) {
                let _ = w.kill();
                let _ = w.wait();
            }
            let text = std::fs::read_to_string(&log).expect("writer log");
            let r = parse_log(&text);
            assert!(
                r.started && r.flushes >= want_flushes,
                "round {round}: writer log too short"
            );
            (r, ch)
        });
        gen = gen.max(r.max_gen);

        d.restart();
        let st = d.cli(&["pool", "status", "p"]);
        assert!(
            st.status.success(),
            "round {round}: pool p did not come back after the kill: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&st.stderr),
            d.log()
        );
        let replayed = d.log().contains("recovered from the log");
        if replayed {
            recovered_rounds += 1;
        }
        let data = read_region(&d);
        let changed = verify_round(round, seed, &r, &mut base, &data);
        assert!(changed > 0, "round {round}: nothing changed on the volume");
        if let Some(ch) = &ch {
            assert!(
                !ch.created.is_empty(),
                "round {round}: no snapshot was created before the kill"
            );
            verify_churn(&d, round, ch, gen);
        }
        d.check_pool("p");
        eprintln!(
            "round {round}: {} flushes, {} operations, {changed} blocks changed, {} snapshots, recovered from the log: {replayed}",
            r.flushes,
            r.ops.values().map(Vec::len).sum::<usize>(),
            ch.map(|c| c.created.len()).unwrap_or(0),
        );
    }
    let st = d.pool_status("p");
    eprintln!(
        "{recovered_rounds} of {rounds} restarts replayed the log; cleaner: {} segments cleaned, {} fragments relocated",
        st["counters"]["cleaned_segments"], st["counters"]["relocated_fragments"]
    );

    // A clean stop and start replays nothing and keeps everything.
    let before = read_region(&d);
    d.stop_clean();
    d.restart();
    assert!(
        !d.log().contains("recovered from the log"),
        "a clean restart should not replay the log:\n{}",
        d.log()
    );
    assert!(
        before == read_region(&d),
        "data changed across a clean stop/start"
    );
    d.finish(1);
}

#[test]
fn kill9_during_writes_and_flushes() {
    campaign("kill9_during_writes_and_flushes", false, "1G");
}

#[test]
fn kill9_during_writes_on_a_small_pool() {
    // At most 16 MiB of live blocks overwritten at random in an 80 MiB
    // pool: after the first rounds the segment cleaner runs all the time,
    // and is killed in the middle too.
    campaign("kill9_during_writes_on_a_small_pool", false, "80M");
}

#[test]
fn kill9_during_writes_and_snapshot_churn() {
    campaign("kill9_during_writes_and_snapshot_churn", true, "1G");
}

#[test]
fn clean_stop_start_keeps_everything_without_replay() {
    let mut d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    d.create_pool("q", "256M", None);
    d.create_volume("p/v", 64 * MIB);
    d.create_volume("q/w", 16 * MIB);
    qemu_io_ok(
        &d.uri("p/v"),
        &["write -P 0x31 0 8M", "write -P 0x32 32M 1M"],
    );
    qemu_io_ok(&d.uri("q/w"), &["write -P 0x33 4M 4M"]);
    d.ok(&["snapshot", "create", "p/v@s"]);
    // Not flushed by the client: a clean shutdown must still keep it.
    python_ok(
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pwrite(b'\\x34' * 65536, 40 << 20)\nh.shutdown()\n",
        &[&d.uri("p/v")],
    );
    let vols_before = d.json(&["volume", "list"]);
    d.stop_clean();
    d.restart();
    // SIGINT (Ctrl-C) stops it as cleanly.
    assert!(
        !d.log().contains("recovered from the log"),
        "a clean restart should not replay the log:\n{}",
        d.log()
    );
    let s = d.stop_with(libc::SIGINT);
    assert!(
        s.success(),
        "edgevol serve exited with {s} after SIGINT:\n{}",
        d.log()
    );
    d.restart();
    assert!(
        !d.log().contains("recovered from the log"),
        "a clean restart should not replay the log:\n{}",
        d.log()
    );
    qemu_io_ok(
        &d.uri("p/v"),
        &[
            "read -P 0x31 0 8M",
            "read -P 0x32 32M 1M",
            "read -P 0x34 40M 64k",
            "read -P 0 41M 1M",
        ],
    );
    qemu_io_ok(&d.uri("q/w"), &["read -P 0x33 4M 4M", "read -P 0 0 4M"]);
    let mut c = Command::new(qemu_io());
    c.args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x31 0 8M",
        "-c",
        "read -P 0 40M 64k",
    ])
    .arg(d.uri("p/v@s"));
    run_ok(&mut c);
    assert_eq!(
        d.json(&["volume", "list"]),
        vols_before,
        "volume list changed across a restart"
    );
    d.finish(2);
}
