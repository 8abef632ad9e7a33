//! `phigate audit verify`: proves the log whole, or names the first record that is not.
//!
//! Checks, in one pass: every line matches its hash; `seq` runs 1, 2, 3, ... without gaps or
//! reordering; every `prev` is the previous record's hash; every checkpoint (in the log's
//! directory and any mirror) is signed by the trusted key and names a record that exists with
//! exactly that hash. A checkpoint past the end of the log means the tail was cut off; a log
//! that starts after record 1 must start right after a signed checkpoint (retention).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::chain::{self, GENESIS};
use crate::checkpoint::{Checkpoint, PublicKey};
use crate::store::{segments, CHECKPOINTS};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub segments: usize,
    pub checkpoints: usize,
    pub last_checkpoint_seq: u64,
    /// Records after the last checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    pub key_id: String,
    /// Session recordings whose digest was checked against their `recording` record.
    pub recordings: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("{what}")]
pub struct Failure {
    /// The first bad record's sequence number, when there is one.
    pub seq: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u64>,
    pub what: String,
}

fn fail(seq: Option<u64>, file: &Path, line: Option<u64>, what: String) -> Failure {
    Failure {
        seq,
        file: Some(file.display().to_string()),
        line,
        what,
    }
}

fn read_checkpoints(
    path: &Path,
    key: &PublicKey,
    into: &mut BTreeMap<u64, (Checkpoint, String)>,
) -> Result<usize, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(fail(None, path, None, format!("cannot read: {e}"))),
    };
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let at = Some(i as u64 + 1);
        let cp: Checkpoint = serde_json::from_str(line)
            .map_err(|e| fail(None, path, at, format!("not a checkpoint: {e}")))?;
        if !cp.verify(key) {
            return Err(fail(
                Some(cp.seq),
                path,
                at,
                format!(
                    "checkpoint for record {} is not signed by the audit key {} (replaced or forged)",
                    cp.seq,
                    key.id()
                ),
            ));
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        if let Some((other, _)) = into.get(&cp.seq) {
            if other.hash != cp.hash {
                return Err(fail(
                    Some(cp.seq),
                    path,
                    at,
                    format!("two signed checkpoints disagree about record {}", cp.seq),
                ));
            }
        }
        into.insert(cp.seq, (cp, origin));
        n += 1;
    }
    Ok(n)
}

/// A `recording` record: the file it names must still hash to its digest.
struct Sealed {
    seq: u64,
    session: String,
    file: String,
    sha256: String,
}

/// Checks each sealed recording in `dir` against its record.
fn verify_recordings(dir: &Path, sealed: &[Sealed]) -> Result<(), Failure> {
    use sha2::{Digest, Sha256};
    for r in sealed {
        let plain_name =
            !r.file.is_empty() && !r.file.contains(['/', '\\']) && r.file != "." && r.file != "..";
        let path = dir.join(&r.file);
        if !plain_name {
            return Err(fail(
                Some(r.seq),
                &path,
                None,
                format!("record {} names an invalid recording file", r.seq),
            ));
        }
        let mut hasher = Sha256::new();
        let hashed =
            std::fs::File::open(&path).and_then(|mut f| std::io::copy(&mut f, &mut hasher));
        match hashed {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    Some(r.seq),
                    &path,
                    None,
                    format!(
                        "the recording of session {} (record {}) is missing",
                        r.session, r.seq
                    ),
                ))
            }
            Err(e) => return Err(fail(Some(r.seq), &path, None, format!("cannot read: {e}"))),
        }
        if hex::encode(hasher.finalize()) != r.sha256 {
            return Err(fail(
                Some(r.seq),
                &path,
                None,
                format!(
                    "the recording of session {} was altered: its digest differs from record {}",
                    r.session, r.seq
                ),
            ));
        }
    }
    Ok(())
}

/// Verifies the log in `dir` against `key`; `mirrors` are further directories holding copies
/// of the checkpoints; `recordings`, when given, is where the session recordings live: each
/// one the log seals is hashed again.
pub fn verify(
    dir: &Path,
    key: &PublicKey,
    mirrors: &[PathBuf],
    recordings: Option<&Path>,
) -> Result<Report, Failure> {
    let mut checkpoints = BTreeMap::new();
    let mut cp_files = 0;
    for d in std::iter::once(dir).chain(mirrors.iter().map(PathBuf::as_path)) {
        cp_files += read_checkpoints(&d.join(CHECKPOINTS), key, &mut checkpoints)?;
    }
    let segs = segments(dir).map_err(|e| fail(None, dir, None, format!("cannot list: {e}")))?;
    let mut walk = Walk {
        checkpoints: &checkpoints,
        expected: None,
        prev: String::new(),
        first_seq: 0,
        records: 0,
        last_seq: 0,
        sealed: Vec::new(),
        warnings: Vec::new(),
    };
    for (si, seg) in segs.iter().enumerate() {
        let bytes =
            std::fs::read(seg).map_err(|e| fail(None, seg, None, format!("cannot read: {e}")))?;
        let lines = walk.lines_of(seg, &bytes, si + 1 == segs.len())?;
        for (li, line) in lines.iter().enumerate() {
            walk.record(seg, li as u64 + 1, line)?;
        }
    }
    let Walk {
        first_seq,
        records,
        last_seq,
        sealed,
        mut warnings,
        ..
    } = walk;
    if let Some((&seq, (_, origin))) = checkpoints.range(last_seq + 1..).next() {
        let file = segs.last().map(PathBuf::as_path).unwrap_or(dir);
        return Err(fail(
            Some(last_seq + 1),
            file,
            None,
            format!(
                "the log ends at record {last_seq} but a signed checkpoint ({origin}) covers record {seq}: records were cut off the end"
            ),
        ));
    }
    let last_checkpoint_seq = checkpoints
        .range(..=last_seq)
        .next_back()
        .map(|(s, _)| *s)
        .unwrap_or(0);
    if checkpoints.is_empty() && records > 0 {
        warnings.push("no checkpoint covers the log yet: a cut-off tail would go unnoticed".into());
    }
    if let Some(rdir) = recordings {
        verify_recordings(rdir, &sealed)?;
    }
    Ok(Report {
        recordings: if recordings.is_some() {
            sealed.len() as u64
        } else {
            0
        },
        records,
        first_seq,
        last_seq,
        segments: segs.len(),
        checkpoints: cp_files,
        last_checkpoint_seq,
        unsigned_tail: last_seq - last_checkpoint_seq.min(last_seq),
        key_id: key.id(),
        warnings,
    })
}

/// A walk along the chain, segment by segment: where it is, and what it has seen.
struct Walk<'a> {
    checkpoints: &'a BTreeMap<u64, (Checkpoint, String)>,
    /// The seq the next record must have (`None` before the first).
    expected: Option<u64>,
    /// The hash of the last record.
    prev: String,
    first_seq: u64,
    records: u64,
    last_seq: u64,
    sealed: Vec<Sealed>,
    warnings: Vec<String>,
}

impl Walk<'_> {
    /// The complete record lines of one segment. Only the last segment (the one being written)
    /// may end in what a crash left behind: bytes after a gap, or a torn last line (warnings);
    /// in any other segment they are failures.
    fn lines_of<'b>(
        &mut self,
        seg: &Path,
        bytes: &'b [u8],
        is_last: bool,
    ) -> Result<Vec<&'b [u8]>, Failure> {
        // The segment being written has space allocated ahead (zeros) past its records.
        let (bytes, ahead) = crate::store::records_of(bytes);
        let stray = ahead.iter().filter(|b| **b != 0).count();
        if stray > 0 {
            if is_last {
                self.warnings.push(format!(
                    "{}: {stray} bytes after a gap past the last record (a write a crash left behind; never acknowledged in the strict tier) were ignored",
                    seg.display()
                ));
            } else {
                return Err(fail(
                    Some(self.last_seq + 1),
                    seg,
                    None,
                    "a segment other than the last has bytes after a gap".into(),
                ));
            }
        }
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        // split leaves "" after a final newline; anything else there is a torn last line.
        if let Some(tail) = lines.pop() {
            if !tail.is_empty() {
                if is_last {
                    self.warnings.push(format!(
                        "{}: an incomplete last line of {} bytes (a write interrupted by a crash; never acknowledged in the strict tier) was ignored",
                        seg.display(),
                        tail.len()
                    ));
                } else {
                    return Err(fail(
                        Some(self.last_seq + 1),
                        seg,
                        Some(lines.len() as u64 + 1),
                        "a segment other than the last ends in an incomplete record".into(),
                    ));
                }
            }
        }
        Ok(lines)
    }

    /// Checks one record line (line `line` of `seg`): it decodes, links to the one before (or,
    /// first, starts the chain or follows a signed checkpoint), matches any checkpoint of its
    /// seq; notes the recordings it seals.
    fn record(&mut self, seg: &Path, line: u64, bytes: &[u8]) -> Result<(), Failure> {
        let at = Some(line);
        let next = self.expected.map_or("?".to_owned(), |e| e.to_string());
        let (record, hash) = chain::decode(bytes)
            .map_err(|e| fail(self.expected, seg, at, format!("record {next}: {e}")))?;
        match self.expected {
            None => {
                self.first_seq = record.seq;
                if record.seq == 1 {
                    if record.prev != GENESIS {
                        return Err(fail(
                            Some(1),
                            seg,
                            at,
                            "record 1 does not start the chain".into(),
                        ));
                    }
                } else {
                    // Older segments were removed (retention): the first kept record must
                    // follow a signed checkpoint.
                    let anchored = self
                        .checkpoints
                        .get(&(record.seq - 1))
                        .is_some_and(|(cp, _)| cp.hash == record.prev);
                    if !anchored {
                        return Err(fail(
                            Some(record.seq),
                            seg,
                            at,
                            format!(
                                "the log starts at record {} without a signed checkpoint for record {} (records were removed from the start)",
                                record.seq,
                                record.seq - 1
                            ),
                        ));
                    }
                }
            }
            Some(e) if record.seq != e => {
                let why = if record.seq > e {
                    format!(
                        "record {e} is missing or out of order (record {} is in its place)",
                        record.seq
                    )
                } else {
                    format!(
                        "record {} appears again where record {e} belongs: reordered or duplicated",
                        record.seq
                    )
                };
                return Err(fail(Some(e), seg, at, why));
            }
            Some(e) if record.prev != self.prev => {
                return Err(fail(
                    Some(e),
                    seg,
                    at,
                    format!(
                        "record {e} does not link to record {} (prev hash differs)",
                        e - 1
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some((cp, origin)) = self.checkpoints.get(&record.seq) {
            if cp.hash != hash {
                return Err(fail(
                    Some(record.seq),
                    seg,
                    at,
                    format!(
                        "record {} differs from the signed checkpoint ({origin})",
                        record.seq
                    ),
                ));
            }
        }
        if let crate::record::Event::Recording {
            session,
            file,
            sha256,
            error,
            ..
        } = record.event
        {
            match error {
                None => self.sealed.push(Sealed {
                    seq: record.seq,
                    session,
                    file,
                    sha256,
                }),
                Some(e) => self.warnings.push(format!(
                    "record {}: the recording of session {session} was not finished: {e}",
                    record.seq
                )),
            }
        }
        self.prev = hash;
        self.last_seq = record.seq;
        self.expected = Some(record.seq + 1);
        self.records += 1;
        Ok(())
    }
}

/// Reads records without verifying (for search, export and reports; run verify to prove
/// them). Stops at the first unreadable line with an error.
pub fn read_records(
    dir: &Path,
    mut each: impl FnMut(crate::record::Record) -> bool,
) -> std::io::Result<()> {
    for seg in segments(dir)? {
        let f = std::io::BufReader::new(std::fs::File::open(&seg)?);
        for line in f.split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            if line[0] == 0 {
                // Space allocated ahead of the records: the end.
                break;
            }
            match chain::decode(&line) {
                Ok((r, _)) => {
                    if !each(r) {
                        return Ok(());
                    }
                }
                // A torn last line after a crash: nothing more to read.
                Err(chain::LineError::NoHash) => break,
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "{}: {e}; run `phigate audit verify`",
                        seg.display()
                    )))
                }
            }
        }
    }
    Ok(())
}
