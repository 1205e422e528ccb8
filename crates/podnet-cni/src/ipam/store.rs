//! IPAM state on disk: `<dataDir>/<network>/state.json`, guarded by an
//! exclusive `flock` on `<dataDir>/<network>/lock`.
//!
//! Writes go to a temporary file renamed over the old one, so a plugin
//! killed at any point leaves either the old state or the new one, never a
//! torn file; a plugin killed while holding the lock loses it with its file
//! descriptor and the next caller proceeds.
//!
//! There is no fsync, on purpose: every attachment lives in a network
//! namespace that dies with the boot, so the state only means something
//! within the boot that wrote it. It carries the boot ID; a state from an
//! earlier boot (or one torn by a power failure, necessarily older than this
//! boot) is started afresh. An fsync would cost 3-45 ms per verb on this
//! kind of machine and protect nothing that outlives the power failure.

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
        let boot = boot_id();
        let state = match File::open(&state_path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)
                    .map_err(|e| CniError::io(format!("read {}", state_path.display()), e))?;
                match serde_json::from_slice::<State>(&buf) {
                    Ok(s) if s.boot_id == boot => s,
                    Ok(_) => State::default(),
                    Err(_) if written_before_boot(&f) => State::default(),
                    Err(e) => {
                        return Err(CniError::new(
                            code::DECODE_FAILURE,
                            format!("IPAM state {} is unreadable: {e}", state_path.display()),
                        ));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(CniError::io(format!("open {}", state_path.display()), e)),
        };
        let state = State {
            boot_id: boot,
            ..state
        };
        Ok(Self {
            dir,
            _lock: lock,
            state,
        })
    }

    /// The addresses one attachment holds, read under the lock and released
    /// at once (CHECK and DEL's ipMasq only look).
    pub fn held_ips(
        data_dir: &Path,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<std::net::IpAddr>, CniError> {
        let store = Self::open(data_dir, network)?;
        Ok(store
            .state
            .held_by(container_id, ifname)
            .iter()
            .map(|a| a.ip)
            .collect())
    }

    /// Replaces the state on disk atomically (write, rename).
    pub fn commit(&self) -> Result<(), CniError> {
        let tmp = self.dir.join("state.json.tmp");
        let target = self.dir.join("state.json");
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
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

/// This boot's ID; empty when the kernel does not say (then states from
/// every boot look alike and are kept, which is the safe side).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the file was last written before this boot began.
fn written_before_boot(f: &File) -> bool {
    let Ok(modified) = f.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return false;
    };
    let btime = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (btime, modified.duration_since(std::time::UNIX_EPOCH)) {
        (Some(b), Ok(m)) => m.as_secs() < b,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "pncni-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(d.join("net")).unwrap();
        d
    }

    #[test]
    fn a_state_from_another_boot_is_started_afresh() {
        let d = dir();
        std::fs::write(
            d.join("net/state.json"),
            r#"{"boot_id":"an-earlier-boot","allocations":[{"ip":"10.0.0.2","range_set":0,"container_id":"c","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let s = LockedStore::open(&d, "net").unwrap();
        assert!(s.state.allocations.is_empty());
        assert_eq!(s.state.boot_id, boot_id());
        s.commit().unwrap();
        drop(s);
        let again = LockedStore::open(&d, "net").unwrap();
        assert_eq!(again.state.boot_id, boot_id());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_state_of_this_boot_is_an_error_not_a_silent_reset() {
        let d = dir();
        std::fs::write(d.join("net/state.json"), r#"{"boot_id":"x","alloc"#).unwrap();
        let e = LockedStore::open(&d, "net")
            .err()
            .expect("torn state must not load");
        assert_eq!(e.code, code::DECODE_FAILURE);
        assert!(e.msg.contains("state.json"), "{}", e.msg);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn commit_replaces_atomically_and_keeps_allocations() {
        let d = dir();
        let mut s = LockedStore::open(&d, "net").unwrap();
        s.state.last_reserved = vec![Some("10.0.0.9".parse().unwrap())];
        s.commit().unwrap();
        drop(s);
        assert!(!d.join("net/state.json.tmp").exists());
        let s = LockedStore::open(&d, "net").unwrap();
        assert_eq!(
            s.state.last_reserved,
            vec![Some("10.0.0.9".parse().unwrap())]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
