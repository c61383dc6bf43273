//! dynamokv-core: the pure logic of dynamokv.
//!
//! Nothing in this crate does IO, reads a clock or keeps global state: every input (including
//! `now`) is an argument. The server and the simulator both drive this code.
//!
//! Modules are named after the Dynamo concept they hold:
//! - [`version`]: dotted version vector sets - vector clocks, siblings, the one merge;
//! - [`context`]: the opaque, authenticated context token handed to clients;
//! - [`ring`]: where a key lives on the hash ring;
//! - [`limits`]: key and value size rules shared by every entry point.

pub mod context;
pub mod limits;
pub mod ring;
pub mod version;

pub use context::{ContextCodec, ContextError};
pub use version::{ActorId, ClockEntry, Dot, Object, Sibling, VersionVector};
