//! What a node found wrong in its stored data, and what it did about it: reads that met
//! corruption (counted, logged, and a salvage asked for) and the salvages run.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Corruption found in a node's objects and hints, and the salvages run (for `/admin/stats`,
/// metrics and `admin status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DamageReport {
    /// Reads that met corruption since the node started.
    pub corrupt_reads: u64,
    /// Whether a salvage is due (corruption met since the last one began).
    pub salvage_due: bool,
    /// Salvages finished since the node started.
    pub salvages: u64,
    /// The last salvage's figures.
    pub last_salvage: Option<crate::Salvage>,
}

/// The object store's record of damage.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    /// Reads that met corruption (a record failing its checksum, an unreadable block).
    found: AtomicU64,
    /// Corruption was met since the last salvage began: one is due.
    due: AtomicBool,
    /// Salvages finished.
    salvages: AtomicU64,
    /// The last salvage's report.
    last: Mutex<Option<crate::Salvage>>,
}

impl Damage {
    /// A read at `key` met corruption (`reason`): counted, logged (the first after a salvage,
    /// then at every power of two) and a salvage asked for.
    pub(crate) fn note(&self, reason: &str, key: &[u8]) {
        let n = self.found.fetch_add(1, Ordering::Relaxed) + 1;
        let first = !self.due.swap(true, Ordering::AcqRel);
        if first || n.is_power_of_two() {
            tracing::error!(
                key = %String::from_utf8_lossy(key),
                corrupt_reads = n,
                reason = %reason,
                "stored data is corrupt: the read fails (the other replicas answer) and this node salvages its storage, then rebuilds what it lost from the other replicas"
            );
        }
    }

    /// Whether a salvage is due.
    pub(crate) fn due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    /// Asks for a salvage, or takes the request back (one starts).
    pub(crate) fn set_due(&self, due: bool) {
        self.due.store(due, Ordering::Release);
    }

    /// A salvage ended with `report`. Reads during its copy still met the old copy's damage,
    /// which is now gone: no other salvage is due for them.
    pub(crate) fn salvaged(&self, report: &crate::Salvage) {
        self.set_due(false);
        self.salvages.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
    }

    /// The counters and the last salvage.
    pub(crate) fn report(&self) -> DamageReport {
        DamageReport {
            corrupt_reads: self.found.load(Ordering::Relaxed),
            salvage_due: self.due(),
            salvages: self.salvages.load(Ordering::Relaxed),
            last_salvage: self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}
