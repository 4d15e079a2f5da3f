//! The local environment: the official emulators started through gcloud (and Firebase's
//! Authentication emulator through npm), the topology created on them, and the seed data.
//! Used by `saga up` and by the tests.

pub mod auth;
pub mod bootstrap;
pub mod process;
pub mod seed;
pub mod stack;
pub mod supervisor;

pub use auth::AuthEmulator;
pub use bootstrap::{Overrides, create_topology, create_topology_with};
pub use process::{Emulator, EmulatorError, Heap, Kind, free_block, free_port, is_ready};
pub use seed::{SeedMode, seed};
