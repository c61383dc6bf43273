//! The admin endpoints: the ring, members, counters, where a key lives and this node's own
//! copy of a key.

use super::errors::ApiError;
use super::kv::context_token;
use super::{AppState, command, key_after, on_store, query};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub(crate) async fn admin_ring(State(s): State<AppState>) -> Result<Response, ApiError> {
    let info = query(&s, |n| n.ring_info()).await?;
    Ok(axum::Json(info).into_response())
}

pub(crate) async fn admin_members(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (cluster, seed_refused) = (s.transport.cluster_id(), s.transport.seed_refused());
    let body = query(&s, move |n| {
        let info = n.ring_info();
        let members: Vec<serde_json::Value> = info
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.member.id,
                    "peer_addr": m.member.peer_addr,
                    "http_addr": m.member.http_addr,
                    "status": m.member.status.as_str(),
                    "generation": m.member.generation,
                    "version": m.member.version,
                    "heartbeat": m.heartbeat,
                    "up": m.up,
                    "connected": m.connected,
                    "phi": m.detector.map(|d| d.phi),
                    "last_heard_ms": m.detector.map(|d| d.last_heard_ms),
                    "unanswered": m.detector.map(|d| d.unanswered),
                    "tokens": m.member.tokens.len(),
                    "share": m.share,
                    "epoch": m.member.epoch,
                    "ended": n
                        .view()
                        .ended(&m.member.id, m.member.instance)
                        .map(|e| e.how.as_str()),
                })
            })
            .collect();
        serde_json::json!({
            "node": info.node,
            "cluster_id": crate::identity::show(cluster),
            "not_joined": super::not_joined(n).then_some(super::NOT_JOINED),
            "seed_refused": seed_refused,
            "ring_version": info.version,
            "stats": n.stats(),
            "members": members,
            "ended": n.ended().map(|e| serde_json::json!({
                "how": e.how.as_str(),
                "by": e.by,
                "message": e.explain(),
            })),
        })
    })
    .await?;
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn admin_stats(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (stats, anti_entropy, transfer, scheduler, traffic, scrub) = query(&s, |n| {
        (
            n.stats(),
            n.anti_entropy_stats(),
            n.transfer().clone(),
            n.scheduler_stats(),
            n.traffic(),
            n.scrub_stats(),
        )
    })
    .await?;
    let pending = on_store(&s, |store| store.hint_counts()).await?;
    let lost_data = on_store(&s, |store| store.engine().lost_data()).await?;
    let total: u64 = pending.values().sum();
    Ok(axum::Json(serde_json::json!({
        "node": s.node_id,
        "hints_stored": stats.hints_stored,
        "hints_delivered": stats.hints_delivered,
        "hints_pending": total,
        "hints_pending_by_owner": pending,
        "read_repairs": stats.read_repairs,
        "sloppy_writes": stats.sloppy_writes,
        "forwarded": stats.forwarded,
        "forward_retries": stats.forward_retries,
        "coordinated_reads": stats.coordinated_reads,
        "coordinated_writes": stats.coordinated_writes,
        "rejected_messages": stats.rejected_messages,
        "reads_by_versions": {
            "1": stats.reads_by_versions[0],
            "2": stats.reads_by_versions[1],
            "3": stats.reads_by_versions[2],
            "4+": stats.reads_by_versions[3],
        },
        "sibling_warnings": stats.sibling_warnings,
        "refused_writes": stats.refused_writes,
        "anti_entropy": anti_entropy,
        "disk": s.store.engine().disk_space(),
        "storage": {
            "damage": s.store.damage(),
            "lost_data": lost_data,
            "scrub": scrub,
        },
        "transfer": transfer,
        "background": scheduler,
        "traffic": traffic,
    }))
    .into_response())
}

/// `POST /admin/repair`: starts an anti-entropy round of every range this node replicates
/// with every other replica; answers the round's id (follow it with `GET /admin/repair`).
pub(crate) async fn start_repair(State(s): State<AppState>) -> Result<Response, ApiError> {
    let round = command(&s, |n| n.repair()).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "node": s.node_id, "round": round })),
    )
        .into_response())
}

/// `GET /admin/repair`: the anti-entropy round in progress and the last one finished.
pub(crate) async fn repair_progress(State(s): State<AppState>) -> Result<Response, ApiError> {
    let ae = query(&s, |n| n.anti_entropy_stats()).await?;
    Ok(axum::Json(serde_json::json!({
        "node": s.node_id,
        "round": ae.round,
        "last_round": ae.last_round,
        "last_round_skipped": ae.last_round_skipped,
        "keys_repaired": ae.keys_repaired,
        "exchanges": ae.exchanges,
        "failed": ae.failed,
        "failed_by": ae.failed_by,
        "postponed": ae.postponed,
        "rebuilding": ae.rebuilding,
        "rebuilding_ranges": ae.rebuilding_ranges,
        "trees_building": ae.trees_building,
    }))
    .into_response())
}

pub(crate) async fn admin_preference_list(
    State(s): State<AppState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/admin/preference-list/")?;
    let position = dynamokv_core::ring::position(&key);
    let body = query(&s, move |n| {
        let pref = n.preference(&key);
        let http = |id: &str| n.members().get(id).map(|m| m.http_addr.clone());
        // Every primary (up or not), then the fallbacks standing in for the down ones.
        let primaries = pref.primaries.iter().map(|id| {
            serde_json::json!({
                "node": id, "primary": true, "up": n.is_up(id), "http_addr": http(id),
            })
        });
        let fallbacks = pref.targets.iter().filter_map(|t| {
            t.hint().map(|owner| {
                serde_json::json!({
                    "node": t.node, "primary": false, "fallback_for": owner,
                    "up": n.is_up(&t.node), "http_addr": http(&t.node),
                })
            })
        });
        serde_json::json!({
            "position": position,
            "ring_version": format!("{:016x}", n.ring().version()),
            "nodes": pref.primaries,
            "entries": primaries.chain(fallbacks).collect::<Vec<_>>(),
        })
    })
    .await?;
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn admin_local(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/admin/local/")?;
    let k = key.clone();
    let found = on_store(&s, move |store| store.get(&k)).await?;
    let Some(obj) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {} holds no copy of this key", s.node_id),
        ));
    };
    Ok(axum::Json(serde_json::json!({
        "node": s.node_id,
        "position": dynamokv_core::ring::position(&key),
        "clock": obj.clock().iter().map(|(a, e)| serde_json::json!({
            "actor": a.to_string(), "counter": e.counter, "timestamp": e.timestamp,
        })).collect::<Vec<_>>(),
        "siblings": obj.siblings().iter().map(|sib| serde_json::json!({
            "actor": sib.dot.actor.to_string(),
            "counter": sib.dot.counter,
            "timestamp": sib.timestamp,
            "tombstone": sib.is_tombstone(),
            "value": sib.value.as_ref().map(|v| STANDARD.encode(v)),
            "expires": sib.expires,
            "kind": match sib.kind {
                dynamokv_core::version::ValueKind::Bytes => "bytes",
                dynamokv_core::version::ValueKind::Counter => "counter",
            },
        })).collect::<Vec<_>>(),
        "context": context_token(&s.codec, &key, &obj),
        "stored_bytes": dynamokv_storage::stored_bytes(&key, &obj),
    }))
    .into_response())
}

fn refused(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "refused", message)
}

/// `POST /admin/leave`: this node starts a graceful leave (`leaving`, then `left` once its new
/// owners confirmed every range).
pub(crate) async fn leave(State(s): State<AppState>) -> Result<Response, ApiError> {
    command(&s, |n| n.leave()).await?.map_err(refused)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "node": s.node_id, "status": "leaving" })),
    )
        .into_response())
}

/// Whether `?force=true` was given (any other value of `force` is refused).
fn forced(q: &std::collections::BTreeMap<String, String>) -> Result<bool, ApiError> {
    match q.get("force").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_force",
            format!("force={other:?}: use force=true or leave it out"),
        )),
    }
}

/// `POST /admin/remove/{id}[?force=true]`: declares a dead member removed; the new owners of
/// its ranges rebuild them from the surviving replicas. Refused while a member that would take
/// over its ranges is down, unless forced.
pub(crate) async fn remove(
    State(s): State<AppState>,
    uri: Uri,
    axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = String::from_utf8(key_after(&uri, "/admin/remove/")?)
        .map_err(|_| ApiError::bad_key("the node id is not UTF-8"))?;
    let who = id.clone();
    let force = forced(&q)?;
    command(&s, move |n| n.remove(&who, force))
        .await?
        .map_err(refused)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "removed": id })),
    )
        .into_response())
}

/// `GET /admin/plan?leave=ID` or `?remove=ID[&force=true]`: what the change would move, per new
/// owner, as a share of the key space and an estimate of keys; refused as the change itself
/// would be.
pub(crate) async fn plan(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let removing = q.contains_key("remove");
    let force = forced(&q)?;
    let id = match (q.get("leave"), q.get("remove")) {
        (Some(id), None) | (None, Some(id)) => id.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_plan",
                "ask for ?leave=NODE or ?remove=NODE",
            ));
        }
    };
    let body = query(&s, move |n| {
        let before: Vec<_> = n.members().values().cloned().collect();
        if !before.iter().any(|m| m.id == id) {
            return Err(format!("no member {id} is known"));
        }
        // Refused before any plan is shown, as the removal itself would be.
        if removing && id != n.id() && n.is_up(&id) {
            return Err(format!(
                "{id} is up: ask it to leave (dynamokv admin leave), which hands its data over"
            ));
        }
        // A change that would hand ranges to a down member is refused before any plan too.
        if !(removing && force) {
            n.refuse_onto_down(&id, removing)?;
        }
        let after: Vec<_> = before
            .iter()
            .cloned()
            .map(|mut m| {
                if m.id == id {
                    m.status = dynamokv_core::membership::Status::Left;
                }
                m
            })
            .collect();
        let nodes = after
            .iter()
            .filter(|m| m.status != dynamokv_core::membership::Status::Left)
            .count();
        let gained = dynamokv_core::membership::plan(&before, &after, usize::from(n.config().n))
            .map_err(|e| e.to_string())?;
        let ae = n.anti_entropy_stats();
        // This node holds about N/nodes of every key; scale its count to the cluster.
        let keys_here = ae.tree_keys as f64;
        let total_keys = keys_here * (nodes.max(1) as f64 + 1.0) / f64::from(n.config().n);
        let moves: Vec<serde_json::Value> = gained
            .iter()
            .map(|(node, share)| {
                serde_json::json!({
                    "to": node,
                    "share": share.max(0.0),
                    "keys_estimate": (share.max(0.0) * total_keys).round() as u64,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "node": id,
            "remaining_members": nodes,
            "moves": moves,
            "share": gained.values().sum::<f64>().max(0.0),
            "keys_estimate": (gained.values().sum::<f64>().max(0.0) * total_keys).round() as u64,
        }))
    })
    .await?
    .map_err(refused)?;
    Ok(axum::Json(body).into_response())
}
