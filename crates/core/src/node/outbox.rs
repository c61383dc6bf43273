//! What the node wants done, collected until the shell drains it.

use crate::membership::{Ended, Member};
use crate::message::{ClientId, ClientResponse, KvMessage, Message, RequestId};

/// Something the node wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append this member record to the persisted membership history.
    Persist(Member),
    /// Keep this ending with the persisted membership history, for good.
    PersistEnded(Ended),
    /// Send `message` to node `to`.
    Send {
        /// Destination node id.
        to: String,
        /// The message.
        message: Message,
    },
    /// Answer client request `client`.
    Respond {
        /// The shell's id of the client request.
        client: ClientId,
        /// The answer.
        response: ClientResponse,
    },
}

/// Where the answer to a client operation goes: the client itself, or the node that forwarded
/// the request here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node.
    Client(ClientId),
    /// A peer that forwarded the request, with its request id.
    Peer {
        /// The peer.
        node: String,
        /// Its request id.
        id: RequestId,
    },
}

/// The outputs of one node, in order. Every concept writes into the same outbox.
#[derive(Debug, Default)]
pub struct Outbox {
    items: Vec<Output>,
}

impl Outbox {
    /// Queues `message` for node `to`.
    pub fn send(&mut self, to: &str, message: impl Into<Message>) {
        self.items.push(Output::Send {
            to: to.to_owned(),
            message: message.into(),
        });
    }

    /// Queues the answer to a client operation.
    pub fn respond(&mut self, origin: Origin, response: ClientResponse) {
        match origin {
            Origin::Client(client) => self.items.push(Output::Respond { client, response }),
            Origin::Peer { node, id } => self.send(&node, KvMessage::ForwardReply { id, response }),
        }
    }

    /// Queues a member record for the persisted history.
    pub fn persist(&mut self, member: Member) {
        self.items.push(Output::Persist(member));
    }

    /// Queues an ending for the persisted membership history.
    pub fn persist_ended(&mut self, ended: Ended) {
        self.items.push(Output::PersistEnded(ended));
    }

    /// Takes every queued output.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.items)
    }
}
