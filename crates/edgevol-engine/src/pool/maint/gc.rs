//! Garbage collection of destroyed history: for every lineage with
//! pending GC or purge, visit its chunks and let the writer drop what no
//! view sees any more. Keeps invariant 4 (only entries no snapshot or
//! head can see are dropped; a flattening lineage is left alone) and
//! invariant 5 (destroying snapshots and volumes frees their space).

use super::send;
use crate::error::Result;
use crate::layout::chunk_start;
use crate::map::Key;
use crate::pool::writer::MaintOp;
use crate::pool::Shared;

pub(super) fn gc_pending(sh: &Shared) -> Result<()> {
    let cat = sh.catalog();
    let todo: Vec<u32> = cat
        .purge_todo
        .iter()
        .chain(cat.gc_todo.iter())
        .copied()
        .collect();
    {
        let mut st = sh.maint_status.lock();
        st.gc_done.retain(|l, _| todo.contains(l));
    }
    for l in todo {
        if cat.flattening.contains(&l) {
            // Its copies are invisible until the detach: not garbage yet.
            continue;
        }
        let views = if cat.lineages.contains_key(&l) {
            cat.views(l)
        } else {
            Vec::new()
        };
        if sh.maint_status.lock().gc_done.get(&l) == Some(&views) {
            continue;
        }
        gc_lineage(sh, l)?;
        let _ = sh.maint_tx.send_blocking(MaintOp::GcDone {
            lineage: l,
            views: views.clone(),
        });
        sh.maint_status.lock().gc_done.insert(l, views);
    }
    Ok(())
}

/// Visit every chunk of lineage `l` and let the writer drop what no view sees.
fn gc_lineage(sh: &Shared, l: u32) -> Result<()> {
    let mut lo = Key::lower(l, 0);
    let hi = Key::lower(l.saturating_add(1), 0);
    let mut chunks: Vec<u64> = Vec::new();
    loop {
        let page = sh.scan(lo, hi, 4096)?;
        for (k, _) in &page.entries {
            let c = chunk_start(k.lba);
            if chunks.last() != Some(&c) {
                chunks.push(c);
            }
        }
        if chunks.len() >= 256 || page.resume.is_none() {
            let batch = std::mem::take(&mut chunks);
            if !batch.is_empty() {
                send(sh, |d| MaintOp::Gc {
                    lineage: l,
                    chunks: batch,
                    done: d,
                })?;
            }
        }
        match page.resume {
            Some(r) => lo = r,
            None => break,
        }
    }
    Ok(())
}
