//! The recorder's writer thread: compresses (and, for roles that see unmasked PHI, encrypts)
//! the sessions' buffers, appends them to each session's `.part` file within the directory's
//! size budget, and seals a file at session end (synced, renamed, digested). Also the recovery
//! of files a crash left unfinished.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{file, part_name, Sealed, Stats, FRAME_BYTES};

pub(super) enum Job {
    Append {
        name: Arc<str>,
        encrypt: bool,
        data: Vec<u8>,
    },
    Seal {
        name: Arc<str>,
        encrypt: bool,
        data: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<Sealed, String>>,
    },
}

/// Seals a recording a crash left half written: renamed to its final name, recorded as
/// incomplete.
pub(super) fn recover(
    dir: &Path,
    name: &str,
    audit: &phigate_audit::Auditor,
) -> anyhow::Result<()> {
    let part = dir.join(part_name(name));
    let done = dir.join(name);
    if done.exists() {
        anyhow::bail!("{} exists already", done.display());
    }
    std::fs::rename(&part, &done)?;
    let (sha256, bytes) = digest(&done)?;
    let session = name.split('.').next().unwrap_or(name).to_owned();
    audit.submit(phigate_audit::Pending::Event(
        phigate_audit::Event::Recording {
            session,
            file: name.to_owned(),
            sha256,
            bytes,
            events: 0,
            encrypted: name.ends_with(".enc"),
            truncated: false,
            complete: false,
            error: None,
        },
    ));
    tracing::warn!(file = %done.display(), "sealed a recording left unfinished by a crash");
    Ok(())
}

pub(super) fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let n = std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// The writer thread's state for one file being written.
struct Open {
    sha: Sha256,
    bytes: u64,
    sealer: Option<file::Sealer>,
    failed: Option<String>,
    /// Chunks left out: the directory reached `max_total_mb`.
    capped: bool,
}

pub(super) struct Writer {
    dir: PathBuf,
    max_total: u64,
    key: Option<Arc<file::Key>>,
    files: HashMap<Arc<str>, Open>,
    queued: Arc<AtomicU64>,
    used: Arc<AtomicU64>,
    stats: Arc<Stats>,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        max_total: u64,
        key: Option<Arc<file::Key>>,
        queued: Arc<AtomicU64>,
        used: Arc<AtomicU64>,
        stats: Arc<Stats>,
    ) -> Writer {
        Writer {
            dir,
            max_total,
            key,
            files: HashMap::new(),
            queued,
            used,
            stats,
        }
    }

    pub(super) fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Append {
                    name,
                    encrypt,
                    data,
                } => {
                    self.queued.fetch_sub(data.len() as u64, Ordering::Relaxed);
                    self.append(&name, encrypt, &data, false);
                }
                Job::Seal {
                    name,
                    encrypt,
                    data,
                    done,
                } => {
                    self.queued.fetch_sub(data.len() as u64, Ordering::Relaxed);
                    self.append(&name, encrypt, &data, true);
                    let _ = done.send(self.seal(&name));
                }
            }
        }
    }

    fn append(&mut self, name: &Arc<str>, encrypt: bool, lines: &[u8], last: bool) {
        if !self.files.contains_key(name) {
            let open = self.create(name, encrypt);
            self.files.insert(name.clone(), open);
        }
        let Some(open) = self.files.get_mut(name) else {
            return;
        };
        if open.failed.is_some() || (lines.is_empty() && !last) {
            return;
        }
        // The directory's budget holds while sessions run: past it, chunks are left out (the
        // file stays readable; its audit record says `truncated`).
        let over = self.used.load(Ordering::Relaxed) + lines.len() as u64 / 4 > self.max_total;
        let lines = if over {
            open.capped = true;
            &[][..]
        } else {
            lines
        };
        if lines.is_empty() && !last {
            return;
        }
        let result = (|| -> Result<Vec<u8>, String> {
            let gz = if lines.is_empty() {
                Vec::new()
            } else {
                file::compress(lines).map_err(|e| e.to_string())?
            };
            match &mut open.sealer {
                // The gzip bytes in frames of at most FRAME_BYTES; the last frame is empty.
                Some(s) => {
                    let mut out = Vec::with_capacity(gz.len() + 64);
                    for part in gz.chunks(FRAME_BYTES) {
                        out.extend(s.frame(part, false)?);
                    }
                    if last {
                        out.extend(s.frame(&[], true)?);
                    }
                    Ok(out)
                }
                None => Ok(gz),
            }
        })();
        let written = result.and_then(|bytes| {
            write_append(&self.dir.join(part_name(name)), &bytes)
                .map(|()| bytes)
                .map_err(|e| e.to_string())
        });
        match written {
            Ok(bytes) => {
                open.sha.update(&bytes);
                open.bytes += bytes.len() as u64;
                self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %name, error = %e, "cannot write a session recording");
                open.failed = Some(e);
            }
        }
    }

    fn create(&self, name: &str, encrypt: bool) -> Open {
        let mut open = Open {
            sha: Sha256::new(),
            bytes: 0,
            sealer: None,
            failed: None,
            capped: false,
        };
        let header = if encrypt {
            let Some(key) = &self.key else {
                open.failed = Some("no recording key".into());
                return open;
            };
            match file::Sealer::new(key) {
                Ok((sealer, header)) => {
                    open.sealer = Some(sealer);
                    header
                }
                Err(e) => {
                    open.failed = Some(e);
                    return open;
                }
            }
        } else {
            Vec::new()
        };
        let created = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(part_name(name)))
            .and_then(|mut f| f.write_all(&header));
        match created {
            Ok(()) => {
                open.sha.update(&header);
                open.bytes = header.len() as u64;
            }
            Err(e) => open.failed = Some(e.to_string()),
        }
        open
    }

    fn seal(&mut self, name: &Arc<str>) -> Result<Sealed, String> {
        let open = self
            .files
            .remove(name)
            .ok_or_else(|| "nothing was recorded".to_owned())?;
        if let Some(e) = open.failed {
            return Err(e);
        }
        let part = self.dir.join(part_name(name));
        let done = self.dir.join(&**name);
        let synced = std::fs::File::open(&part)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&part, &done))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        if let Err(e) = synced {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e.to_string());
        }
        Ok(Sealed {
            file: name.to_string(),
            sha256: hex::encode(open.sha.finalize()),
            bytes: open.bytes,
            capped: open.capped,
        })
    }
}

fn write_append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(bytes)
}
