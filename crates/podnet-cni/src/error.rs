//! The CNI error object: what the runtime reads on stdout when a verb fails.
//! Codes are the specification's; podnet's own (>= 100) are listed in
//! `docs/cni.md`.

use serde::Serialize;

/// A failure to report to the runtime, with the spec's code and a message
/// that names the field or variable at fault.
#[derive(Debug, thiserror::Error, Serialize)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The numeric code (spec codes 1-99, podnet's from 100).
    pub code: u32,
    /// One-line message.
    pub msg: String,
    /// Longer explanation, when there is one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The spec's well-known error codes, and podnet's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// podnet: no free address left in a range set.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// podnet: a requested address is taken or outside every range.
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    /// podnet: a hostPort is already forwarded to another pod on this node.
    pub const HOST_PORT_IN_USE: u32 = 102;
    /// podnet: CHECK found the network different from prevResult.
    pub const CHECK_FAILED: u32 = 110;
    /// podnet: the kernel refused a link, address or route operation.
    pub const DATAPLANE: u32 = 120;
    /// podnet: a delegated IPAM plugin failed.
    pub const DELEGATE: u32 = 130;
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the longer explanation.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Invalid network configuration, naming the field.
    pub fn config(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_CONFIG, format!("invalid {field}: {why}"))
    }

    /// Invalid or missing environment variable.
    pub fn env(var: &str, why: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_ENV, format!("{var}: {why}"))
    }

    /// An I/O failure on a named path or object.
    pub fn io(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Self::new(code::IO_FAILURE, format!("{what}: {err}"))
    }

    /// The kernel refused a datapath change.
    pub fn dataplane(err: impl std::fmt::Display) -> Self {
        Self::new(code::DATAPLANE, err.to_string())
    }
}

impl From<podnet_kernel::netlink::NetlinkError> for CniError {
    fn from(e: podnet_kernel::netlink::NetlinkError) -> Self {
        Self::dataplane(e)
    }
}
