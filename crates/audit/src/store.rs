//! Where records live. [`Store`] is the seam a shared control-store backend (a PostgreSQL
//! database separate from the protected one) can implement for a fleet; [`FileStore`] is the
//! embedded default: segment files in a directory of the gateway's data directory.
//!
//! Layout of the directory:
//! - `audit-<first seq, 20 digits>.jsonl`: segments, one record per line, appended (made
//!   durable by a separate `fdatasync`: see the writer);
//!   a new segment starts when the current one reaches the size limit (a checkpoint is written
//!   at every rotation, so the first record of a segment links to a signed hash);
//! - `checkpoints.jsonl`: signed checkpoints (also copied to the mirror directory, if any);
//! - `audit-signing.pub`: the checkpoint key's public half (hex), for `phigate audit verify`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Writes whole encoded lines, starting with record `first_seq`, without waiting for the
    /// disk: once this returns they survive the gateway's process, not yet a power loss. On
    /// error nothing of `lines` may remain. Returns true when it started a new segment, after
    /// making the previous one durable (so everything written before is durable).
    fn write(&mut self, first_seq: u64, lines: &[u8]) -> std::io::Result<bool>;
    /// A handle that makes everything written so far durable, usable from another thread while
    /// writes go on (`None` when nothing was written yet). It covers the current segment: a
    /// rotation makes the previous one durable first.
    fn syncer(&self) -> Option<Arc<dyn Syncer>>;
    /// Makes everything written durable, now.
    fn sync(&mut self) -> std::io::Result<()>;
    /// True once any sync failed: every later sync fails too (the kernel reports a failed
    /// writeback once, and a later fsync could succeed without the pages it dropped).
    fn broken(&self) -> bool;
    /// Where signed checkpoints go: usable without the store (the writer thread stores
    /// periodic checkpoints without holding the chain, so sessions' writes go on meanwhile).
    fn checkpoints(&self) -> Arc<dyn CheckpointSink>;
    /// True when the next write starts a new segment (the caller checkpoints first).
    fn wants_rotation(&self, next_bytes: usize) -> bool;
}

/// Stores a signed checkpoint durably (and copies it to the second place, if configured).
pub trait CheckpointSink: Send + Sync {
    fn write(&self, cp: &Checkpoint) -> std::io::Result<()>;
}

/// `checkpoints.jsonl` in the log's directory and in the mirror directory.
struct CheckpointFiles {
    dir: PathBuf,
    mirror: Option<PathBuf>,
}

impl CheckpointSink for CheckpointFiles {
    fn write(&self, cp: &Checkpoint) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cp).map_err(std::io::Error::other)?;
        line.push(b'\n');
        append_line(&self.dir.join(CHECKPOINTS), &line)?;
        if let Some(m) = &self.mirror {
            append_line(&m.join(CHECKPOINTS), &line)?;
        }
        Ok(())
    }
}

/// Makes a store's writes durable (one `fdatasync`), from the sync thread.
pub trait Syncer: Send + Sync {
    /// Makes durable at least everything written before the call.
    fn sync(&self) -> std::io::Result<()>;
}

/// The open segment's durability: a second descriptor of it, for the sync thread, how much of
/// it was written and how much is known to be on disk.
struct SegmentSync {
    file: File,
    /// Shared by every segment of the store, held during each sync (syncs of the store never
    /// overlap, so a failure reported to one caller is seen by every later one): true once a
    /// sync failed.
    broken: Arc<Mutex<bool>>,
}

impl SegmentSync {
    fn guarded(&self, sync: impl FnOnce(&File) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        if *broken {
            return Err(std::io::Error::other(
                "an earlier fsync of the audit log failed",
            ));
        }
        let result = sync(&self.file);
        if result.is_err() {
            *broken = true;
        }
        result
    }
}

impl Syncer for SegmentSync {
    fn sync(&self) -> std::io::Result<()> {
        self.guarded(File::sync_data)
    }
}

struct Segment {
    file: File,
    /// Where the records end.
    len: u64,
    /// The file's size: space past `len` is allocated ahead (zeros), so that a write changes
    /// no file size and its `fdatasync` commits no metadata (about a third less per fsync).
    allocated: u64,
    sync: Arc<SegmentSync>,
}

/// Space allocated ahead of the records, per step.
const PREALLOCATE: u64 = 4 << 20;

/// Allocates `len` bytes at `offset` (reading as zeros) without writing them.
fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len)
        .map_err(std::io::Error::from)
}

/// Where a segment's records end: at its first NUL byte (records never contain one; a segment
/// is zeros past its records while it is written). Also returns how many bytes past that are
/// not zeros: what a crash left of a write behind a hole, never acknowledged.
fn records_end(f: &mut File) -> std::io::Result<(u64, u64)> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut end, mut stray) = (0u64, None, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let from = match end {
            Some(_) => 0,
            None => match chunk.iter().position(|b| *b == 0) {
                Some(i) => {
                    end = Some(pos + i as u64);
                    i
                }
                None => n,
            },
        };
        stray += chunk[from..].iter().filter(|b| **b != 0).count() as u64;
        pos += n as u64;
    }
    Ok((end.unwrap_or(pos), stray))
}

/// The records of a segment's bytes: up to the first NUL (the space allocated ahead).
pub fn records_of(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    bytes.split_at(end)
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
    segment_max: u64,
    current: Option<Segment>,
    broken: Arc<Mutex<bool>>,
    checkpoints: Arc<CheckpointFiles>,
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = crate::private::options()
        .create(true)
        .append(true)
        .open(path)?;
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
        crate::private::dir_all(dir)?;
        for d in std::iter::once(dir).chain(mirror) {
            crate::private::dir_all(d)?;
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
                    crate::private::options()
                        .create(true)
                        .truncate(true)
                        .write(true)
                        .open(&path)?
                        .write_all(format!("{}\n", hex::encode(&key.0)).as_bytes())?;
                    sync_dir(d)?;
                }
            }
        }
        let mut store = FileStore {
            dir: dir.to_owned(),
            segment_max,
            current: None,
            broken: Arc::default(),
            checkpoints: Arc::new(CheckpointFiles {
                dir: dir.to_owned(),
                mirror: mirror.map(Path::to_owned),
            }),
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
        let segment_name = last
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut repairs = Vec::new();
        let (len, stray) = records_end(&mut f)?;
        if len < f.metadata()?.len() {
            // Space allocated ahead by a gateway that stopped without closing the segment.
            f.set_len(len)?;
            f.sync_all()?;
        }
        if stray > 0 {
            repairs.push(Event::AuditRepaired {
                segment: segment_name.clone(),
                bytes_removed: stray,
            });
        }
        // Records are at most a few hundred KiB; the tail holds the last whole one.
        let window = len.min(4 * 1024 * 1024);
        f.seek(SeekFrom::Start(len - window))?;
        let mut tail = Vec::with_capacity(window as usize);
        f.read_to_end(&mut tail)?;
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(p) => p + 1,
            None if window == len => 0,
            None => return Err(std::io::Error::other("audit segment has a line over 4 MiB")),
        };
        if keep < tail.len() {
            // A write cut short by a crash: never acknowledged in the strict tier (in the process
            // tier, a power loss: the run marker makes the next start record audit_unsynced).
            let removed = (tail.len() - keep) as u64;
            f.set_len(len - removed)?;
            f.sync_all()?;
            repairs.push(Event::AuditRepaired {
                segment: segment_name,
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
    fn write(&mut self, first_seq: u64, lines: &[u8]) -> std::io::Result<bool> {
        let mut rotated = false;
        if self.current.is_none() || self.wants_rotation(lines.len()) {
            let segs = segments(&self.dir)?;
            let reuse = match (&self.current, segs.last()) {
                (None, Some(last)) => {
                    std::fs::metadata(last)?.len() + lines.len() as u64 <= self.segment_max
                }
                _ => false,
            };
            if let Some(old) = &self.current {
                // Everything in the old segment is on disk, without the space allocated ahead,
                // before the chain goes on elsewhere.
                old.file.set_len(old.len)?;
                old.sync.guarded(File::sync_all)?;
                rotated = true;
            }
            let path = match (reuse, segs.last()) {
                (true, Some(last)) => last.clone(),
                _ => self.dir.join(segment_name(first_seq)),
            };
            let file = crate::private::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let len = file.metadata()?.len();
            if len == 0 {
                sync_dir(&self.dir)?;
            }
            let sync = Arc::new(SegmentSync {
                file: file.try_clone()?,
                broken: self.broken.clone(),
            });
            self.current = Some(Segment {
                file,
                len,
                allocated: len,
                sync,
            });
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(std::io::Error::other("no audit segment open"));
        };
        let end = seg.len + lines.len() as u64;
        if end > seg.allocated {
            let to = end.max(seg.allocated + PREALLOCATE);
            // Where allocating ahead fails (no space for a whole step, or a file system without
            // it), the write itself extends the file.
            if allocate(&seg.file, seg.allocated, to - seg.allocated).is_ok() {
                seg.allocated = to;
            }
        }
        use std::os::unix::fs::FileExt;
        match seg.file.write_all_at(lines, seg.len) {
            Ok(()) => {
                seg.len += lines.len() as u64;
                Ok(rotated)
            }
            Err(e) => {
                // Leave no partial batch behind: these records were never acknowledged.
                let _ = seg.file.set_len(seg.len);
                seg.allocated = seg.len;
                Err(e)
            }
        }
    }

    fn syncer(&self) -> Option<Arc<dyn Syncer>> {
        self.current
            .as_ref()
            .map(|s| s.sync.clone() as Arc<dyn Syncer>)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match &self.current {
            Some(seg) => seg.sync.sync(),
            None => Ok(()),
        }
    }

    fn broken(&self) -> bool {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkpoints(&self) -> Arc<dyn CheckpointSink> {
        self.checkpoints.clone()
    }

    fn wants_rotation(&self, next_bytes: usize) -> bool {
        self.current
            .as_ref()
            .is_some_and(|s| s.len > 0 && s.len + next_bytes as u64 > self.segment_max)
    }
}

impl Drop for FileStore {
    /// A segment closed cleanly carries no space allocated ahead.
    fn drop(&mut self) {
        if let Some(seg) = &self.current {
            if !self.broken()
                && seg.allocated > seg.len
                && seg.file.set_len(seg.len).is_ok()
                && seg.file.sync_all().is_err()
            {
                tracing::warn!("cannot sync the audit segment at close");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SigningKey;
    use crate::record::Record;

    fn key() -> PublicKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("key"))
            .expect("key")
            .public()
    }

    /// Records 1..=n as the writer encodes them.
    fn lines(n: u64) -> (Vec<u8>, String) {
        let (mut out, mut hash) = (Vec::new(), GENESIS.to_owned());
        for seq in 1..=n {
            let record = Record {
                seq,
                ts: "2026-11-29T00:00:00Z".into(),
                prev: hash,
                event: Event::GatewayStop {
                    reason: "test".into(),
                },
            };
            hash = chain::encode(&record, &mut out).expect("encode");
        }
        (out, hash)
    }

    #[test]
    fn space_allocated_ahead_is_not_records_after_a_crash_or_a_clean_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key();
        let (records, hash) = lines(3);
        let (mut store, head) = FileStore::open(dir.path(), None, 1 << 30, &key).expect("open");
        assert_eq!(head.seq, 0);
        store.write(1, &records).expect("write");
        store.sync().expect("sync");
        let seg = segments(dir.path()).expect("segments").remove(0);
        let on_disk = std::fs::read(&seg).expect("read");
        assert!(on_disk.len() > records.len(), "space is allocated ahead");
        assert_eq!(records_of(&on_disk).0, &records[..]);
        // A crash: the segment keeps its zeros; opening finds the records' end, repairs nothing.
        std::mem::forget(store);
        let (store, head) = FileStore::open(dir.path(), None, 1 << 30, &key).expect("reopen");
        assert_eq!((head.seq, head.hash.as_str()), (3, hash.as_str()));
        assert!(head.repairs.is_empty(), "{:?}", head.repairs);
        assert_eq!(std::fs::read(&seg).expect("read"), records);
        drop(store);

        // A write a power loss left behind a hole: cut, and recorded as a repair.
        let mut bytes = records.clone();
        bytes.extend_from_slice(&[0; 100]);
        bytes.extend_from_slice(b"{\"seq\":9");
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&seg, &bytes).expect("write");
        let (mut store, head) = FileStore::open(dir.path(), None, 1 << 30, &key).expect("reopen");
        assert_eq!(head.seq, 3);
        assert!(
            matches!(
                head.repairs.as_slice(),
                [Event::AuditRepaired {
                    bytes_removed: 8,
                    ..
                }]
            ),
            "{:?}",
            head.repairs
        );
        // A clean close leaves no zeros behind.
        let (more, _) = lines(4);
        store.write(4, &more[records.len()..]).expect("write");
        drop(store);
        assert_eq!(std::fs::read(&seg).expect("read"), more);
    }
}
