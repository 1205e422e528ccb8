//! IPAM state on disk: `<dataDir>/<network>/state.json`, guarded by an
//! exclusive `flock` on `<dataDir>/<network>/lock`.
//!
//! Writes go to a temporary file that is fsynced and renamed over the old
//! one, so a crash at any point leaves either the old state or the new one,
//! never a torn file. A plugin killed while holding the lock loses it with
//! its file descriptor; the next caller proceeds.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::State;
use crate::error::{CniError, code};

/// How long a caller waits for the lock before answering "try again later".
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The locked state of one network; dropping it releases the lock.
pub struct LockedStore {
    dir: PathBuf,
    _lock: File,
    /// The state as read.
    pub state: State,
}

impl LockedStore {
    /// Takes the network's lock and reads its state.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, CniError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("ipam.dataDir {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("ipam lock {}", lock_path.display()), e))?;
        lock_exclusive(&lock, &lock_path)?;
        let state_path = dir.join("state.json");
        let state = match File::open(&state_path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)
                    .map_err(|e| CniError::io(format!("read {}", state_path.display()), e))?;
                serde_json::from_slice(&buf).map_err(|e| {
                    CniError::new(
                        code::DECODE_FAILURE,
                        format!("IPAM state {} is unreadable: {e}", state_path.display()),
                    )
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(CniError::io(format!("open {}", state_path.display()), e)),
        };
        Ok(Self {
            dir,
            _lock: lock,
            state,
        })
    }

    /// Replaces the state on disk atomically (write, fsync, rename).
    pub fn commit(&self) -> Result<(), CniError> {
        let tmp = self.dir.join("state.json.tmp");
        let target = self.dir.join("state.json");
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &target)
        };
        write().map_err(|e| CniError::io(format!("write {}", target.display()), e))
    }

    /// Checks that the data directory is writable (STATUS).
    pub fn check_writable(&self) -> Result<(), CniError> {
        let probe = self.dir.join(".probe");
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    format!("ipam.dataDir {} is not writable: {e}", self.dir.display()),
                )
            })
    }
}

fn lock_exclusive(file: &File, path: &Path) -> Result<(), CniError> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut pause = Duration::from_micros(200);
    loop {
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(CniError::io(format!("lock {}", path.display()), err));
        }
        if Instant::now() >= deadline {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "IPAM lock {} is held by another invocation for over {}s",
                    path.display(),
                    LOCK_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}
