//! dynamokv-core: the pure logic of dynamokv.
//!
//! Nothing in this crate does IO, reads a clock or keeps global state: every input (including
//! `now`) is an argument. The server and the simulator both drive this code.
//!
//! Modules are named after the Dynamo concept they hold:
//! - [`version`]: dotted version vector sets - vector clocks, siblings, the one merge;
//! - [`counter`]: the convergent counter (PN-counter) a counter key's siblings hold;
//! - [`context`]: the opaque, authenticated context token handed to clients;
//! - [`clock`]: the two clocks - monotonic for timers, wall for version timestamps;
//! - [`ring`]: where a key lives on the hash ring, tokens;
//! - [`preference`]: a key's preference list - primaries, and fallbacks for the down ones;
//! - [`membership`]: member records, the membership CRDT, digests and deltas;
//! - [`gossip`]: whom to gossip with;
//! - [`failure_detector`]: local phi-accrual failure detection;
//! - [`rng`]: the seeded random generator behind every random choice;
//! - [`quorum`]: counting replies toward R and W;
//! - [`node`]: the node state machine - a facade over one module per concept (cluster,
//!   forwarding, coordination, replica, handoff);
//! - [`message`]: client requests and answers, peer messages;
//! - [`store`]: the state machine's view of local storage;
//! - [`limits`]: key and value size rules shared by every entry point;
//! - `testing` (tests and the `testing` feature): an in-memory store and network.

pub mod clock;
pub mod context;
pub mod counter;
pub mod failure_detector;
pub mod gossip;
pub mod limits;
pub mod membership;
pub mod merkle;
pub mod message;
pub mod node;
pub mod preference;
pub mod quorum;
pub mod ring;
pub mod rng;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod version;

pub use context::{ContextCodec, ContextError};
pub use version::{ActorId, ClockEntry, Dot, Object, Sibling, VersionVector};
