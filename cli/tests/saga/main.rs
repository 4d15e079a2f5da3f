//! Integration tests against the real Pub/Sub and Firestore emulators.

mod bad_input;
mod bench;
mod browser;
mod chaos;
mod cli;
mod cloud_run;
mod dead_letters;
mod deploy;
mod duplicates;
mod evolving;
mod failures;
mod faults;
mod happy_path;
mod helpers;
mod observability;
mod push_auth;
mod saga_up;
mod security;
mod shutdown;
mod spans;
mod transactions;
