//! HTTP handlers: each parses its path, query and body, calls one [`floe_broker::Broker`]
//! operation, and renders the result (or maps the engine error to a status). No
//! validation, partitioning or state logic lives here.

pub(crate) mod groups;
pub(crate) mod ops;
pub(crate) mod peer;
pub(crate) mod queues;
pub(crate) mod records;
pub(crate) mod stream;
pub(crate) mod topics;
pub(crate) mod txns;
