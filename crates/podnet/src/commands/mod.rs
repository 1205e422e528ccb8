//! One module per CLI verb.

pub mod audit;
pub mod connectivity;
pub mod doctor;
pub mod down;
pub mod drops;
pub mod node;
pub mod status;
pub mod trace;
pub mod up;
