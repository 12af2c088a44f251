//! The data directory is private to the gateway's user: it holds personal data (the events) and
//! the token signing key. It is created with mode 0700 and every file in it with 0600, whatever
//! the umask, and a directory that other users can write is refused: they could replace the log
//! or the key, or swap in a symbolic link.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

/// Why the data directory cannot be used. Names the directory and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Users other than the gateway's can create, remove or rename files in it.
    #[error(
        "the data directory {} can be written by other users (mode {mode:04o}): they could \
         replace the event log or the token signing key. Make it private to the gateway's user \
         (`chmod 700 {}`) or choose another --data-dir",
        path.display(),
        path.display()
    )]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path exists and is not a directory.
    #[error("the data directory {} is not a directory (--data-dir)", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory's metadata could not be read.
    #[error("cannot inspect the data directory {}", path.display())]
    Inspect {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory could not be created.
    #[error("cannot create the data directory {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirState {
    /// It does not exist yet: [`create`] makes it.
    Missing,
    /// It exists and only its owner (and the group or others, reading) has access.
    Present {
        /// Whether its group or other users may list and read it (a warning, not a refusal: an
        /// operator may mean it, and the files in it are 0600 anyway).
        readable_by_others: bool,
    },
}

/// Checks `path` without changing anything: refuses a directory others can write, or a path
/// that is not a directory.
pub fn check(path: &Path) -> Result<DataDirState, DataDirError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(DataDirState::Missing),
        Err(source) => {
            return Err(DataDirError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.is_dir() {
        return Err(DataDirError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let mode = permission_bits(&metadata);
    if mode & 0o022 != 0 {
        return Err(DataDirError::WritableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(DataDirState::Present {
        readable_by_others: mode & 0o055 != 0,
    })
}

/// Checks `path` as [`check`] does and creates it (and missing parents) with mode 0700 when it
/// is missing. Warns when an existing directory can be read by others.
pub fn create(path: &Path) -> Result<(), DataDirError> {
    match check(path)? {
        DataDirState::Missing => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(path).map_err(|source| DataDirError::Create {
                path: path.to_owned(),
                source,
            })
        }
        DataDirState::Present {
            readable_by_others: true,
        } => {
            tracing::warn!(
                path = %path.display(),
                "the data directory can be listed by other users; it holds personal data: \
                 `chmod 700` it"
            );
            Ok(())
        }
        DataDirState::Present { .. } => Ok(()),
    }
}

/// Opens `path` for reading and writing, creating it with mode 0600. A file that exists with a
/// wider mode (the event log of a version that created it under the umask) is narrowed to 0600,
/// with a warning: it holds personal data.
pub fn open_private_file(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = permission_bits(&file.metadata()?);
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "the file could be read by other users; its mode is now 0600"
            );
        }
    }
    Ok(file)
}

#[cfg(unix)]
fn permission_bits(metadata: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o7777
}

/// Other systems have no such bits to check.
#[cfg(not(unix))]
fn permission_bits(_metadata: &std::fs::Metadata) -> u32 {
    0o700
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_others_can_write_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            set_mode(dir.path(), mode);
            let error = check(dir.path()).unwrap_err();
            assert!(
                matches!(error, DataDirError::WritableByOthers { mode: m, .. } if m == mode),
                "{mode:o}: {error:?}"
            );
            let message = error.to_string();
            let path = dir.path().display().to_string();
            assert!(message.contains(&format!("chmod 700 {path}")), "{message}");
            assert!(create(dir.path()).is_err(), "{mode:o}");
        }
        set_mode(dir.path(), 0o750);
        assert_eq!(
            check(dir.path()).unwrap(),
            DataDirState::Present {
                readable_by_others: true
            }
        );
        set_mode(dir.path(), 0o700);
        assert_eq!(
            check(dir.path()).unwrap(),
            DataDirState::Present {
                readable_by_others: false
            }
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            check(&file),
            Err(DataDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn new_directories_and_files_are_private_and_old_files_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("data");
        assert_eq!(check(&data).unwrap(), DataDirState::Missing);
        create(&data).unwrap();
        assert_eq!(mode_of(&data), 0o700);
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);

        let file = data.join("events.redb");
        drop(open_private_file(&file).unwrap());
        assert_eq!(mode_of(&file), 0o600);
        set_mode(&file, 0o644);
        drop(open_private_file(&file).unwrap());
        assert_eq!(mode_of(&file), 0o600);
    }
}
