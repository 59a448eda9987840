//! Integration tests of the writer: one binary, a temporary directory per test.

mod artifacts;
mod bad_input;
mod devices;
mod harness;
mod interop;
mod roundtrip;
mod signatures;
mod used_targets;
