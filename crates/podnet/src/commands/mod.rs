//! One module per CLI verb.

pub mod connectivity;
pub mod doctor;
pub mod down;
pub mod node;
pub mod status;
pub mod trace;
pub mod up;
