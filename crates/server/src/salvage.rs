//! Salvaging damaged storage while the node runs, and remembering to rebuild what it dropped.
//!
//! The object store notes corruption whenever a read meets it (a client's read, anti-entropy,
//! the scrub) and marks a salvage due. This task looks every second: it runs the salvage off the
//! async threads ([`ObjectStore::salvage`]: writes of objects are refused meanwhile, and the
//! coordinators send them to other replicas), then tells the node, which rebuilds what was
//! dropped from the other replicas ([`dynamokv_core::node::Node::storage_salvaged`]). The engine
//! keeps a durable mark that data was lost until the node has synchronised every range; this
//! task clears it then. A node started with the mark still set rebuilds again (see `lib.rs`).

use crate::runtime::NodeHandle;
use dynamokv_storage::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

/// How often the task looks.
const EVERY: Duration = Duration::from_secs(1);

/// After a salvage failed, the wait before the next try.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Runs until the node thread stops.
pub async fn watch(store: Arc<ObjectStore>, node: NodeHandle) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.salvage_due() {
            // Until the node hears how it went, its copies do not count towards reads: the
            // salvage may drop a record the moment after a read found it missing.
            if node.command(|n| n.storage_salvage_begins()).await.is_err() {
                return;
            }
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.salvage()).await {
                Ok(Ok(report)) => {
                    // An earlier salvage that failed half-way may have dropped records too.
                    let lost = report.lost_any() || matches!(store.engine().lost_data(), Ok(true));
                    if lost {
                        tracing::error!(
                            kept = report.kept,
                            dropped = report.dropped,
                            unreadable = report.unreadable,
                            "salvaged the damaged storage; what it dropped is rebuilt from the other replicas, and this node's reads do not count towards quorums until then"
                        );
                    }
                    if node
                        .command(move |n| n.storage_salvaged(lost))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "salvaging the damaged storage failed; trying again in 30 s");
                    store.mark_salvage_due();
                    if !salvage_ended(&store, &node).await {
                        return;
                    }
                    tokio::time::sleep(AFTER_FAILURE).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the salvage task failed");
                    if !salvage_ended(&store, &node).await {
                        return;
                    }
                }
            }
        }
        forget_when_rebuilt(&store, &node).await;
    }
}

/// Tells the node a salvage ended without a report: it rebuilds if the engine says data was
/// lost. False once the node thread has stopped.
async fn salvage_ended(store: &Arc<ObjectStore>, node: &NodeHandle) -> bool {
    let lost = matches!(store.engine().lost_data(), Ok(true));
    node.command(move |n| n.storage_salvaged(lost))
        .await
        .is_ok()
}

/// Clears the engine's mark of lost data once the node has rebuilt it.
async fn forget_when_rebuilt(store: &Arc<ObjectStore>, node: &NodeHandle) {
    if !matches!(store.engine().lost_data(), Ok(true)) {
        return;
    }
    let Ok(rebuilding) = node.query(|n| n.anti_entropy_stats().rebuilding).await else {
        return;
    };
    if rebuilding {
        return;
    }
    let engine = store.engine().clone();
    match tokio::task::spawn_blocking(move || engine.forget_lost_data()).await {
        Ok(Ok(())) => tracing::warn!(
            "rebuilt what the salvage dropped: every range has synchronised with another replica"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "cannot clear the mark of lost data"),
        Err(e) => tracing::error!(error = %e, "the salvage task failed"),
    }
}
