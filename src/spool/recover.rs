//! Start-up recovery: removes what a crash can leave in the spool, none of it acknowledged.

use super::TMP;
use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Removes what a crash can leave behind, none of it acknowledged: everything in `tmp/`, an
/// `.eml` without its `.json`, a `.json` without its `.eml`, and a `.done` (the recipients
/// done, see [`super::FilesQueue`]) whose message is gone. Creates the directories if needed.
pub fn recover(dir: &Path) -> io::Result<usize> {
    let tmp = dir.join(TMP);
    fs::create_dir_all(&tmp)?;
    let mut removed = 0;
    for entry in fs::read_dir(&tmp)? {
        let path = entry?.path();
        tracing::warn!(file = %path.display(), "removing uncommitted spool leftover");
        fs::remove_file(&path)?;
        removed += 1;
    }
    let mut names = std::collections::HashSet::new();
    for entry in fs::read_dir(dir)? {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        let orphan = if let Some(id) = name.strip_suffix(".eml") {
            !names.contains(&format!("{id}.json"))
        } else if let Some(id) = name.strip_suffix(".json") {
            !names.contains(&format!("{id}.eml"))
        } else if let Some(id) = name.strip_suffix(".done") {
            !names.contains(&format!("{id}.json")) || !names.contains(&format!("{id}.eml"))
        } else {
            false
        };
        if orphan {
            tracing::warn!(file = %dir.join(name).display(), "removing uncommitted spool leftover");
            fs::remove_file(dir.join(name))?;
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::lock::LOCK_FILE;

    #[test]
    fn recover_removes_only_uncommitted_files() {
        let dir = std::env::temp_dir().join(format!("ringmx-recover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(TMP)).unwrap();
        for name in [
            "A.eml",
            "A.json",
            "B.eml",
            "C.json",
            "C.done",
            "A.done",
            "tmp/D.eml",
            "tmp/D.json",
            "notes",
            LOCK_FILE,
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(recover(&dir).unwrap(), 5);
        assert_eq!(fs::read_dir(dir.join(TMP)).unwrap().count(), 0);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["A.done", "A.eml", "A.json", "notes", LOCK_FILE, "tmp"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
