//! Integration tests against the real Pub/Sub and Firestore emulators.

mod bad_input;
mod duplicates;
mod failures;
mod happy_path;
mod helpers;
mod saga_up;
