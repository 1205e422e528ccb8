//! One module per CLI verb.

pub mod connectivity;
pub mod down;
pub mod node;
pub mod status;
pub mod up;
