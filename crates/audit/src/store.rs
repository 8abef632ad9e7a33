//! Where records live. [`Store`] is the seam a shared control-store backend (a PostgreSQL
//! database separate from the protected one) can implement for a fleet; [`FileStore`] is the
//! embedded default: segment files in a directory of the gateway's data directory.
//!
//! Layout of the directory:
//! - `audit-<first seq, 20 digits>.jsonl`: segments, one record per line, appended and fsynced;
//!   a new segment starts when the current one reaches the size limit (a checkpoint is written
//!   at every rotation, so the first record of a segment links to a signed hash);
//! - `checkpoints.jsonl`: signed checkpoints (also copied to the mirror directory, if any);
//! - `audit-signing.pub`: the checkpoint key's public half (hex), for `phigate audit verify`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::chain::{self, GENESIS};
use crate::checkpoint::{Checkpoint, PublicKey};
use crate::record::Event;

pub const CHECKPOINTS: &str = "checkpoints.jsonl";
pub const PUBLIC_KEY: &str = "audit-signing.pub";

/// Where the chain stands when the store opens.
#[derive(Debug, Clone)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// What opening had to repair (a torn last line), to be recorded.
    pub repairs: Vec<Event>,
}

pub trait Store: Send + 'static {
    /// Appends whole encoded lines, durably (one fsync), starting with record `first_seq`.
    /// On error nothing of `lines` may remain.
    fn append(&mut self, first_seq: u64, lines: &[u8]) -> std::io::Result<()>;
    /// Stores a signed checkpoint (and copies it to the second place, if configured).
    fn checkpoint(&mut self, cp: &Checkpoint) -> std::io::Result<()>;
    /// True when the next append starts a new segment (the caller checkpoints first).
    fn wants_rotation(&self, next_bytes: usize) -> bool;
}

pub fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The segment files in chain order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    out.sort();
    Ok(out)
}

pub struct FileStore {
    dir: PathBuf,
    mirror: Option<PathBuf>,
    segment_max: u64,
    current: Option<(File, u64)>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    f.sync_data()
}

impl FileStore {
    /// Opens (creating) the directory, repairs a torn last line, and returns the head.
    pub fn open(
        dir: &Path,
        mirror: Option<&Path>,
        segment_max: u64,
        key: &PublicKey,
    ) -> std::io::Result<(FileStore, Head)> {
        std::fs::create_dir_all(dir)?;
        for d in std::iter::once(dir).chain(mirror) {
            std::fs::create_dir_all(d)?;
            let path = d.join(PUBLIC_KEY);
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing.trim() == hex::encode(&key.0) => {}
                Ok(_) => {
                    return Err(std::io::Error::other(format!(
                        "{}: the audit log was started with another signing key; \
                         configure that key, or start a new audit directory",
                        path.display()
                    )))
                }
                Err(_) => {
                    std::fs::write(&path, format!("{}\n", hex::encode(&key.0)))?;
                    sync_dir(d)?;
                }
            }
        }
        let mut store = FileStore {
            dir: dir.to_owned(),
            mirror: mirror.map(Path::to_owned),
            segment_max,
            current: None,
        };
        let head = store.read_head()?;
        Ok((store, head))
    }

    fn read_head(&mut self) -> std::io::Result<Head> {
        let segs = segments(&self.dir)?;
        let Some(last) = segs.last() else {
            return Ok(Head {
                seq: 0,
                hash: GENESIS.to_owned(),
                repairs: Vec::new(),
            });
        };
        let mut f = OpenOptions::new().read(true).write(true).open(last)?;
        let len = f.metadata()?.len();
        // Records are at most a few hundred KiB; the tail holds the last whole one.
        let window = len.min(4 * 1024 * 1024);
        f.seek(SeekFrom::Start(len - window))?;
        let mut tail = Vec::with_capacity(window as usize);
        f.read_to_end(&mut tail)?;
        let mut repairs = Vec::new();
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(p) => p + 1,
            None if window == len => 0,
            None => return Err(std::io::Error::other("audit segment has a line over 4 MiB")),
        };
        if keep < tail.len() {
            // A write cut short by a crash: never acknowledged, so nothing relied on it.
            let removed = (tail.len() - keep) as u64;
            f.set_len(len - removed)?;
            f.sync_all()?;
            repairs.push(Event::AuditRepaired {
                segment: last
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes_removed: removed,
            });
            tail.truncate(keep);
        }
        let body = &tail[..keep.saturating_sub(1)];
        let line = match body.iter().rposition(|b| *b == b'\n') {
            Some(p) => &body[p + 1..],
            None => body,
        };
        if line.is_empty() {
            // An empty segment (rotation just happened): the previous segment holds the head.
            drop(f);
            if segs.len() > 1 {
                std::fs::remove_file(last)?;
                return self.read_head();
            }
            return Ok(Head {
                seq: 0,
                hash: GENESIS.to_owned(),
                repairs,
            });
        }
        let (record, hash) = chain::decode(line).map_err(|e| {
            std::io::Error::other(format!(
                "the last audit record in {} is damaged ({e}); run `phigate audit verify`",
                last.display()
            ))
        })?;
        Ok(Head {
            seq: record.seq,
            hash,
            repairs,
        })
    }

    /// Deletes whole segments last written before `cutoff`, never the newest one. The
    /// checkpoint written at each rotation lets `verify` start from the oldest kept segment.
    pub fn prune(&self, retention: Duration) -> std::io::Result<usize> {
        let segs = segments(&self.dir)?;
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for seg in segs.iter().take(segs.len().saturating_sub(1)) {
            let modified = std::fs::metadata(seg)?.modified()?;
            if modified < cutoff {
                std::fs::remove_file(seg)?;
                removed += 1;
            } else {
                break;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

impl Store for FileStore {
    fn append(&mut self, first_seq: u64, lines: &[u8]) -> std::io::Result<()> {
        if self.current.is_none() || self.wants_rotation(lines.len()) {
            let segs = segments(&self.dir)?;
            let reuse = match (&self.current, segs.last()) {
                (None, Some(last)) => {
                    std::fs::metadata(last)?.len() + lines.len() as u64 <= self.segment_max
                }
                _ => false,
            };
            let path = match (reuse, segs.last()) {
                (true, Some(last)) => last.clone(),
                _ => self.dir.join(segment_name(first_seq)),
            };
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = f.metadata()?.len();
            if len == 0 {
                sync_dir(&self.dir)?;
            }
            self.current = Some((f, len));
        }
        let Some((f, len)) = self.current.as_mut() else {
            return Err(std::io::Error::other("no audit segment open"));
        };
        let result = f.write_all(lines).and_then(|()| f.sync_data());
        match result {
            Ok(()) => {
                *len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Leave no partial batch behind: these records were never acknowledged.
                let _ = f.set_len(*len);
                let _ = f.sync_data();
                Err(e)
            }
        }
    }

    fn checkpoint(&mut self, cp: &Checkpoint) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cp).map_err(std::io::Error::other)?;
        line.push(b'\n');
        append_line(&self.dir.join(CHECKPOINTS), &line)?;
        if let Some(m) = &self.mirror {
            append_line(&m.join(CHECKPOINTS), &line)?;
        }
        Ok(())
    }

    fn wants_rotation(&self, next_bytes: usize) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(_, len)| *len > 0 && len + next_bytes as u64 > self.segment_max)
    }
}
