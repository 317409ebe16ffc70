//! The dashboard's questions to nodes, relayed on their control streams, and the
//! answers routed back by id.
//!
//! Invariant: a question is pending only while its node is connected; when the node
//! goes, its questions are dropped, which tells their askers (a closed channel)
//! rather than leaving them to time out.

use super::HeadState;
use crate::ids::{NodeId, PeerId};
use crate::protocol::{AgentReply, AgentRequest, FromHead};
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::oneshot;

/// Questions sent and not yet answered.
#[derive(Default)]
pub(super) struct AgentRelay {
    next_id: u64,
    pending: HashMap<u64, (PeerId, oneshot::Sender<AgentReply>)>,
}

impl HeadState {
    /// Sends `request` to `node`; `reply` gets the answer, or is dropped if the node
    /// is not live or goes before answering.
    pub(super) fn ask_node(
        &mut self,
        node: NodeId,
        request: AgentRequest,
        reply: oneshot::Sender<AgentReply>,
    ) {
        let Some(peer) = self.nodes.live_peer(node) else {
            return;
        };
        let relay = &mut self.agent_relay;
        // Askers that gave up (timed out) leave their entries: sweep them here.
        relay.pending.retain(|_, (_, r)| !r.is_closed());
        relay.next_id += 1;
        let id = relay.next_id;
        relay.pending.insert(id, (peer, reply));
        self.send(peer, FromHead::AgentRequest { id, request });
    }

    /// `peer` answered question `id`; only the node it was asked of may answer it.
    pub(super) fn agent_replied(&mut self, peer: PeerId, id: u64, reply: AgentReply) {
        match self.agent_relay.pending.get(&id) {
            Some((asked, _)) if *asked == peer => {
                if let Some((_, to)) = self.agent_relay.pending.remove(&id) {
                    let _ = to.send(reply);
                }
            }
            _ => tracing::debug!(?peer, id, "an answer to no question of this peer; ignored"),
        }
    }

    /// `peer` is gone: its questions will not be answered.
    pub(super) fn drop_agent_requests(&mut self, peer: PeerId) {
        self.agent_relay
            .pending
            .retain(|_, (asked, _)| *asked != peer);
    }
}
