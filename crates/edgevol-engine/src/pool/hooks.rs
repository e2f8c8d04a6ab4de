//! Hooks for tests, benchmarks and debugging tools: running maintenance
//! and the cleaner now, the engine counters, where a block's record is
//! stored, and the segment table in one line.
//!
//! Reads state or asks the maintenance code to run; it keeps no DESIGN.md
//! invariant of its own (the maintenance it runs keeps 5 and 6).

use super::{maint, Pool, Stats};
use crate::error::{Error, Result};

fn map_key(l: u32, lba: u64) -> crate::map::Key {
    crate::map::Key::lower(l, lba)
}

impl Pool {
    /// Flush the memtable and run pending GC and compaction now (for tests
    /// and `pool status` precision); waits until done.
    pub fn sync_maintenance(&self) -> Result<()> {
        maint::run_all(&self.sh, true)
    }

    /// Run the cleaner on up to `max` segments now (tests, benchmarks).
    pub fn clean_now(&self, max: usize) -> Result<u64> {
        maint::clean(&self.sh, max, 1.0)
    }

    /// Where the record holding block `lba` of volume `vol` is stored: the
    /// byte offset on its (first) device and the stored length. For tests
    /// and debugging tools.
    pub fn debug_record_location(&self, vol: &str, lba: u64) -> Result<(u64, u64)> {
        let cat = self.sh.catalog();
        let chain = cat.head_chain(cat.volume_by_name(vol)?.id)?;
        let sh = &self.sh;
        let pieces = crate::chunk::resolve(&chain, lba, 1, |l, f, t| {
            Ok(sh.scan(map_key(l, f), map_key(l, t), usize::MAX)?.entries)
        })?;
        match pieces.first().map(|p| &p.kind) {
            Some(crate::chunk::PieceKind::Data(d)) => Ok((
                self.sh
                    .vdevs
                    .device_offset(d.paddr.seg, u64::from(d.paddr.offset)),
                u64::from(d.stored_len),
            )),
            _ => Err(Error::not_found(format!(
                "block {lba} of {vol} holds no data"
            ))),
        }
    }

    /// One line per segment (state, live KiB, written KiB), for debugging.
    pub fn debug_segments(&self) -> String {
        let segs = self.sh.segs.lock();
        segs.iter()
            .map(|(id, s)| {
                format!(
                    "{id:?}:{:?}/{}/{}{}",
                    s.state,
                    s.live >> 10,
                    s.written >> 10,
                    if segs.is_open(id) { "*" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The engine counters.
    pub fn stats(&self) -> &Stats {
        &self.sh.stats
    }
}
