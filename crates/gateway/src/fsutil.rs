//! Files the gateway writes that hold secrets or must survive a crash whole.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates `path` readable by the owner only; fails if it exists.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `path` (owner-only) so that a reader, or a crash, sees the old content or the new,
/// never a mix: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents owner-only (0700), whatever the umask.
pub fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    phigate_audit::private::dir_all(dir)
}

/// One mode the start-up walk tightened.
#[derive(Debug, PartialEq, Eq)]
pub struct Tightened {
    pub path: std::path::PathBuf,
    pub was: u32,
    pub now: u32,
}

/// Tightens everything under `root` (itself included) that is ours (owned by the gateway's
/// effective user; the root may belong to someone else, e.g. `root:phigate 0770`, and is
/// walked all the same, with a warning if others can read it): regular files to owner-only
/// (the owner's bits kept), directories to 0700 — or 0711 for a directory holding something
/// owned by another user, who must be able to pass through it (the demo run as root keeps
/// PostgreSQL's directory, owned by `postgres`, in its data directory). Never loosens a mode,
/// never follows a symbolic link, leaves sockets alone, and does not descend into what is
/// another user's or into a PostgreSQL data directory (`PG_VERSION`; PostgreSQL checks its
/// own modes). Returns what it changed, for the caller to warn about.
pub fn tighten_tree(root: &Path) -> std::io::Result<Vec<Tightened>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // A data directory may well be a symbolic link itself (/var/lib/phigate -> /data/...):
    // the walk starts at what it names, and follows no link below.
    let root = std::fs::canonicalize(root)?;
    let me = rustix::process::geteuid().as_raw();
    let mut changed = Vec::new();
    let top = root.clone();
    let mut todo = vec![root];
    while let Some(dir) = todo.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        let ours = meta.uid() == me;
        if !meta.is_dir() || (!ours && dir != top) || dir.join("PG_VERSION").exists() {
            continue;
        }
        if !ours && meta.permissions().mode() & 0o007 != 0 {
            tracing::warn!(path = %dir.display(), mode = %format!("{:04o}", meta.permissions().mode() & 0o7777), "the data directory belongs to another user and others can enter it: make it 0750 or tighter");
        }
        let mut foreign = false;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Someone else's directory we may pass through but not list: nothing of ours to see.
            Err(e) if !ours && e.kind() == std::io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let m = std::fs::symlink_metadata(entry.path())?;
            if m.uid() != me {
                foreign = true;
                continue;
            }
            if m.is_dir() {
                todo.push(entry.path());
            } else if m.is_file() {
                tighten(&entry.path(), m.permissions().mode(), 0, &mut changed)?;
            }
        }
        if ours {
            let traverse = if foreign { 0o011 } else { 0 };
            tighten(&dir, meta.permissions().mode(), traverse, &mut changed)?;
        }
    }
    Ok(changed)
}

fn tighten(
    path: &Path,
    mode: u32,
    allowed: u32,
    changed: &mut Vec<Tightened>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let was = mode & 0o7777;
    let now = was & (0o700 | allowed);
    if now != was {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(now)) {
            Ok(()) => {}
            // Not ours to change after all: left for the operator (the walk goes on).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(path = %path.display(), mode = %format!("{was:04o}"), "cannot make this owner-only");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        changed.push(Tightened {
            path: path.to_owned(),
            was,
            now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn loose_modes_are_tightened_and_reported() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("data");
        private_dir_all(&root.join("audit")).expect("mkdir");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("audit")), 0o700);
        let seg = root.join("audit").join("seg.jsonl");
        std::fs::write(&seg, "x").expect("write");
        std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tool = root.join("hook.sh");
        std::fs::write(&tool, "x").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let changed = tighten_tree(&root).expect("walk");
        assert_eq!(mode(&seg), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&tool), 0o700, "the owner's bits are kept");
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed.contains(&Tightened {
            path: seg.clone(),
            was: 0o644,
            now: 0o600
        }));
        assert!(tighten_tree(&root).expect("walk").is_empty(), "idempotent");
        // Through a symbolic link to the data directory, and not through one inside it.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&root, &link).expect("symlink");
        let outside = t.path().join("outside.txt");
        std::fs::write(&outside, "x").expect("write");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&outside, root.join("to-outside")).expect("symlink");
        std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let changed = tighten_tree(&link).expect("walk");
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(mode(&seg), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link inside is not followed");
    }
}
