//! Fuzzing of every decoder that reads bytes from the network: peer framing and the handshake,
//! peer messages, context tokens, RESP, and the HTTP key, query and context parsing.
//!
//! Runs on the stable toolchain: [`engine::run`] feeds a target random bytes, mutations of its
//! corpus and structure-aware inputs ([`inputs`]), and fails on a panic, a broken property, an
//! allocation beyond [`engine::alloc_bound`] or a case running past the hang limit. The test
//! suite runs every target for a bounded number of cases; `dynamokv-fuzz --minutes N` runs
//! them for as long as asked.

pub mod alloc;
pub mod engine;
pub mod inputs;
pub mod targets;

/// Every binary linking this crate (the runner and its tests) counts its allocations.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
