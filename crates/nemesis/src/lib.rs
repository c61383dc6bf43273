//! Real hosts, real network faults: a dynamokv cluster whose nodes each live in their own Linux
//! network namespace ([`netns`]), real `dynamokv server` processes ([`cluster`]), the HTTP
//! workload ([`workload`]), a nemesis cutting links, killing and pausing nodes on a seeded
//! schedule ([`run`]), and the verdict of the simulator's checker after the heal ([`verdict`]).
//!
//! Used by the end-to-end test (`crates/cli/tests/nemesis.rs`) and by `dynamokv-nemesis` for
//! long soaks.

pub mod cluster;
pub mod netns;
pub mod run;
pub mod verdict;
pub mod workload;
