//! The fio job matrix.

/// What a job does to the image, which decides the image state it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Writes only: a fresh image for thin targets, the filled file for raw.
    Write,
    /// Reads only: always a filled image.
    Read,
    /// Reads and writes: a filled image.
    Mixed,
}

/// One fio job of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Name used in tables, JSON and `--jobs`.
    pub name: &'static str,
    /// fio `rw`.
    pub rw: &'static str,
    /// fio `bs`.
    pub bs: &'static str,
    /// fio `iodepth` (per job).
    pub iodepth: u32,
    /// fio `numjobs` (each an NBD connection).
    pub numjobs: u32,
    /// More fio options.
    pub extra: &'static [&'static str],
    /// Read, write or mixed.
    pub kind: Kind,
    /// Timed (`runtime`/`ramp_time`) or one pass over the image (fill).
    pub timed: bool,
}

const fn job(
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    numjobs: u32,
    extra: &'static [&'static str],
    kind: Kind,
) -> Job {
    Job {
        name,
        rw,
        bs,
        iodepth,
        numjobs,
        extra,
        kind,
        timed: true,
    }
}

/// The matrix, in table order.
pub const JOBS: [Job; 7] = [
    job(
        "randwrite-4k-qd1",
        "randwrite",
        "4k",
        1,
        1,
        &[],
        Kind::Write,
    ),
    job(
        "randwrite-4k-qd1-fsync",
        "randwrite",
        "4k",
        1,
        1,
        &["--fsync=1"],
        Kind::Write,
    ),
    job(
        "randwrite-4k-4x16",
        "randwrite",
        "4k",
        16,
        4,
        &[],
        Kind::Write,
    ),
    job("randread-4k-4x16", "randread", "4k", 16, 4, &[], Kind::Read),
    job("seqwrite-128k-qd8", "write", "128k", 8, 1, &[], Kind::Write),
    job("seqread-128k-qd8", "read", "128k", 8, 1, &[], Kind::Read),
    job(
        "randrw-16k-70-30-4x8",
        "randrw",
        "16k",
        8,
        4,
        &["--rwmixread=70"],
        Kind::Mixed,
    ),
];

/// Writes every byte of an image once, sequentially; measured too.
pub const FILL: Job = Job {
    name: "fill-seq-1m-qd8",
    rw: "write",
    bs: "1m",
    iodepth: 8,
    numjobs: 1,
    extra: &[],
    kind: Kind::Write,
    timed: false,
};

/// The jobs of `--quick`.
pub const QUICK: [&str; 3] = ["randwrite-4k-4x16", "randread-4k-4x16", "seqwrite-128k-qd8"];

/// Select jobs by name (table order kept); an unknown name is an error.
pub fn select(names: &[String]) -> Result<Vec<Job>, String> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(JOBS.to_vec());
    }
    if let Some(bad) = names.iter().find(|n| !JOBS.iter().any(|j| j.name == *n)) {
        let known: Vec<&str> = JOBS.iter().map(|j| j.name).collect();
        return Err(format!("unknown job {bad:?}; known: {}", known.join(", ")));
    }
    Ok(JOBS
        .iter()
        .filter(|j| names.iter().any(|n| n == j.name))
        .copied()
        .collect())
}

/// The order jobs run in within a pass: writes first, then reads, then the
/// mixed job (which rewrites the filled images last).
pub fn execution_order(jobs: &[Job]) -> Vec<Job> {
    let mut v = jobs.to_vec();
    v.sort_by_key(|j| match j.kind {
        Kind::Write => 0,
        Kind::Read => 1,
        Kind::Mixed => 2,
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        assert_eq!(select(&[]).expect("all").len(), JOBS.len());
        let s = select(&["randread-4k-4x16".into(), "randwrite-4k-qd1".into()]).expect("two");
        assert_eq!(s[0].name, "randwrite-4k-qd1"); // table order
        assert!(select(&["nope".into()]).is_err());
        for q in QUICK {
            assert!(JOBS.iter().any(|j| j.name == q));
        }
    }

    #[test]
    fn order() {
        let o = execution_order(&JOBS);
        assert_eq!(o.last().map(|j| j.kind), Some(Kind::Mixed));
        let first_read = o.iter().position(|j| j.kind == Kind::Read);
        let last_write = o.iter().rposition(|j| j.kind == Kind::Write);
        assert!(last_write < first_read);
    }
}
