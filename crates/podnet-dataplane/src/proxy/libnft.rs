//! An in-process nftables session through `libnftables.so.1` (the library
//! the `nft` tool is built on, loaded at run time): the same text, the same
//! single-transaction semantics, without starting a process per change.
//! When the library is missing, the applier falls back to `nft -f`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::AsRawFd;

use super::Target;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Api {
    free: CtxFree,
    error_buffer: CtxStr,
    output_buffer: CtxStr,
    run: RunCmd,
}

/// One libnftables context, bound to the target's network namespace.
pub(super) struct Session {
    ctx: *mut c_void,
    api: Api,
}

// SAFETY: the context is used only through `&mut self` (one thread at a
// time); libnftables keeps no thread-local state.
unsafe impl Send for Session {}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("libnftables session")
    }
}

fn sym<T: Copy>(lib: *mut c_void, name: &CStr) -> Option<T> {
    // SAFETY: dlsym on a handle from dlopen; the caller names the type.
    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: T is a function pointer type of the same size as *void.
        Some(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
    }
}

impl Session {
    /// Opens a context whose netlink socket lives in `target`'s namespace;
    /// `None` if the library is not installed or cannot be used.
    pub(super) fn open(target: &Target) -> Option<Session> {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle
        // is never closed (the library stays for the process's life).
        let lib = unsafe { libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW) };
        if lib.is_null() {
            return None;
        }
        let new: CtxNew = sym(lib, c"nft_ctx_new")?;
        let buffer_error: CtxInt = sym(lib, c"nft_ctx_buffer_error")?;
        let buffer_output: CtxInt = sym(lib, c"nft_ctx_buffer_output")?;
        let api = Api {
            free: sym(lib, c"nft_ctx_free")?,
            error_buffer: sym(lib, c"nft_ctx_get_error_buffer")?,
            output_buffer: sym(lib, c"nft_ctx_get_output_buffer")?,
            run: sym(lib, c"nft_run_cmd_from_buffer")?,
        };
        let make = move || {
            // SAFETY: plain libnftables calls on a fresh context.
            unsafe {
                let ctx = new(0);
                if ctx.is_null() {
                    return None;
                }
                buffer_error(ctx);
                buffer_output(ctx);
                // The netlink socket is opened with the context, in the
                // namespace of the calling thread.
                Some(ctx as usize)
            }
        };
        let ctx = match target.file.as_ref() {
            None => make()?,
            Some(f) => {
                let fd = f.as_raw_fd();
                std::thread::scope(|s| {
                    s.spawn(move || {
                        // SAFETY: setns on this short-lived thread only.
                        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                            return None;
                        }
                        make()
                    })
                    .join()
                    .ok()
                    .flatten()
                })?
            }
        } as *mut c_void;
        let mut session = Session { ctx, api };
        // Make sure the socket really is in the target namespace: the
        // check runs a harmless listing.
        session.run("list tables").ok()?;
        Some(session)
    }

    /// Runs `script` as one transaction; `Err` carries nft's message.
    pub(super) fn run(&mut self, script: &str) -> Result<(), String> {
        let c = CString::new(script).map_err(|_| "script contains a NUL byte".to_string())?;
        // SAFETY: ctx is live; the buffer is NUL-terminated and outlives
        // the call; the error buffer is owned by the context.
        unsafe {
            let rc = (self.api.run)(self.ctx, c.as_ptr());
            if rc == 0 {
                return Ok(());
            }
            let err = (self.api.error_buffer)(self.ctx);
            let msg = if err.is_null() {
                String::new()
            } else {
                CStr::from_ptr(err).to_string_lossy().trim().to_string()
            };
            Err(msg)
        }
    }
}

impl Session {
    /// Runs a listing command and returns what nft printed (what `nft
    /// list ...` would print), without starting a process.
    pub(super) fn query(&mut self, command: &str) -> Result<String, String> {
        // Whatever earlier commands printed is discarded first (fetching
        // the buffer rewinds it).
        // SAFETY: ctx is live; the buffer is owned by the context.
        unsafe { (self.api.output_buffer)(self.ctx) };
        self.run(command)?;
        // SAFETY: as above; copied out before the next call reuses it.
        unsafe {
            let out = (self.api.output_buffer)(self.ctx);
            Ok(if out.is_null() {
                String::new()
            } else {
                CStr::from_ptr(out).to_string_lossy().into_owned()
            })
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: ctx came from nft_ctx_new and is freed once.
        unsafe { (self.api.free)(self.ctx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;

    #[test]
    fn a_session_works_inside_its_namespace_only() {
        let ns = NetNs::unique("pxlib").unwrap();
        let target = Target::namespace(&ns.path()).unwrap();
        let mut s =
            Session::open(&target).expect("libnftables.so.1 (package libnftables1) must load");
        s.run("add table ip podnet-libnft-test\nadd chain ip podnet-libnft-test c\n")
            .unwrap();
        let listed = crate::nft::run(target.nft(), &["list", "tables"]).unwrap();
        assert!(listed.contains("podnet-libnft-test"), "{listed}");
        let host = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&host.stdout).contains("podnet-libnft-test"));
        let err = s
            .run("add rule ip podnet-libnft-test nosuchchain accept")
            .unwrap_err();
        assert!(
            err.contains("nosuchchain") || err.contains("No such file"),
            "{err}"
        );
    }
}
