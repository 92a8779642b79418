//! The SCMB's data, as pure types: the message envelope and how a body is decoded
//! ([`message`]), the alert fields the tools read ([`alert`]), and which messages a user wants
//! ([`filter`]). No I/O and no async here: everything else depends on this crate, and it depends
//! on nothing of ours.

pub mod alert;
pub mod filter;
pub mod message;
pub mod peek;

pub use alert::AlertView;
pub use filter::{Filter, FilterProblem};
pub use message::{ChangeType, DecodeError, Event};
pub use peek::{peek, Peek};
