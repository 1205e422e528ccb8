//! One module per CLI verb.

pub mod down;
pub mod status;
pub mod up;
