//! What a start of `twofold serve` creates (the SQLite database, the master
//! key, the mail directory), noted before it does, so that a start that
//! fails can remove exactly that and nothing that was there before: trying
//! again then begins from the same state, and no key is left behind that a
//! later start would take for the right one.

use std::path::{Path, PathBuf};

/// Files and directories a start is about to create, so that a failed
/// start can remove exactly those and nothing that was there before.
#[derive(Default)]
pub struct NewFiles {
    files: Vec<PathBuf>,
    /// Deepest first, so each is empty when its turn comes.
    directories: Vec<PathBuf>,
}

impl NewFiles {
    pub fn add(&mut self, file: PathBuf) {
        self.files.push(file);
    }

    /// A SQLite file not there yet, and its companions. Of a file that
    /// exists nothing is taken: its `-wal` may hold another process's
    /// committed writes.
    pub fn watch_sqlite(&mut self, file: &Path) {
        if file.exists() {
            return;
        }
        self.files.push(file.to_path_buf());
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_os_string();
            name.push(suffix);
            self.files.push(name.into());
        }
    }

    /// `directory` and those of its parents that do not exist yet.
    pub fn watch_directory(&mut self, directory: &Path) {
        let missing = directory
            .ancestors()
            .filter(|path| !path.as_os_str().is_empty())
            .take_while(|path| !path.exists());
        self.directories.extend(missing.map(Path::to_path_buf));
    }

    pub fn remove(&self) {
        for file in &self.files {
            if std::fs::remove_file(file).is_ok() {
                tracing::info!(path = %file.display(), "removed what the failed start created");
            }
        }
        for directory in &self.directories {
            // Only while empty: never anything someone put there meanwhile.
            if std::fs::remove_dir(directory).is_ok() {
                tracing::info!(path = %directory.display(), "removed what the failed start created");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_what_the_start_created_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.db");
        std::fs::write(&kept, "someone's data").unwrap();
        std::fs::write(dir.path().join("kept.db-wal"), "their writes").unwrap();
        let mail = dir.path().join("a").join("mail");
        let busy = dir.path().join("busy");

        let mut created = NewFiles::default();
        created.watch_sqlite(&kept);
        created.watch_sqlite(&dir.path().join("new.db"));
        created.watch_directory(&mail);
        created.watch_directory(&busy);
        std::fs::write(dir.path().join("new.db"), "").unwrap();
        std::fs::write(dir.path().join("new.db-wal"), "").unwrap();
        std::fs::create_dir_all(&mail).unwrap();
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("someone's.eml"), "").unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, "").unwrap();
        created.add(key);
        created.remove();

        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["busy", "kept.db", "kept.db-wal"]);
        assert!(busy.join("someone's.eml").exists());
    }
}
