//! Subscriptions: what a subscriber names and what the gateway keeps for it, over the
//! [`crate::log`] traits.
//!
//! - [`names`]: the names of durable consumers and consumer groups (one namespace, one rule).
//! - [`cursors`]: durable consumers' cursors, in the state store.
//! - [`quota`]: how many durable consumers and consumer groups there may be, and who made each.
//! - [`filter`]: which events a plain or durable stream delivers.
//! - [`groups`]: consumer groups: partitions, their assignment to members, cursors and fencing.

pub mod cursors;
pub mod filter;
pub mod groups;
pub mod names;
pub mod quota;

pub use cursors::{CursorError, Cursors};
pub use filter::{Filter, FilterError};
pub use names::{ConsumerName, GroupName, InvalidName, Name, NameKind};
pub use quota::{Quota, QuotaError, QuotaLimits, SubscriberIdentity};
