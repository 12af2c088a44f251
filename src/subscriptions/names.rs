//! The names subscribers pick for durable consumers and consumer groups: one namespace, one rule,
//! one validated type, [`Name`]. The kind of a name is in its type, so that a consumer's name
//! cannot be used where a group's is meant.

use std::{fmt, hash::Hash, marker::PhantomData};

use crate::error::{ErrorKind, ServiceError, is_plain_name};

/// Longest name of a durable consumer or consumer group, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What a durable consumer or consumer group name may be, as the refusals say it.
pub const NAME_RULE: &str = "1 to 128 ASCII letters, digits, '-', '_' or '.', \
     with no '.' at the start or the end and no two in a row";

/// Whether `name` may name a durable consumer or a consumer group (one namespace, one rule): a
/// plain name of at most [`MAX_NAME_LEN`] bytes whose dots only separate non-empty parts. The
/// name becomes part of state-store keys (`consumer.<name>`, `partition.<name>.<n>`), which NATS
/// carries as subjects: an empty part between dots is not a valid subject, and such a name would
/// be accepted here only to fail there as `UNAVAILABLE`.
pub fn is_name(name: &str) -> bool {
    is_plain_name(name, MAX_NAME_LEN) && name.split('.').all(|part| !part.is_empty())
}

/// What a name in the shared namespace belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A durable consumer.
    Consumer,
    /// A consumer group.
    Group,
}

impl NameKind {
    /// The key prefix of this kind's records in the state store: one record per name, so that
    /// counting the keys counts the names.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Consumer => "consumer.",
            Self::Group => "group.",
        }
    }

    /// The kind in a word, as requests and messages name it.
    pub const fn word(self) -> &'static str {
        match self {
            Self::Consumer => "consumer",
            Self::Group => "group",
        }
    }
}

/// The kind of a [`Name`], in its type: [`Consumer`] or [`Group`].
pub trait Kind: Send + Sync + 'static {
    /// The kind.
    const KIND: NameKind;
    /// How `Debug` shows a name of this kind.
    const TYPE_NAME: &'static str;
}

/// A durable consumer's name is a [`Name<Consumer>`](Name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {}

/// A consumer group's name is a [`Name<Group>`](Name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {}

impl Kind for Consumer {
    const KIND: NameKind = NameKind::Consumer;
    const TYPE_NAME: &'static str = "ConsumerName";
}

impl Kind for Group {
    const KIND: NameKind = NameKind::Group;
    const TYPE_NAME: &'static str = "GroupName";
}

/// The name of a durable consumer.
pub type ConsumerName = Name<Consumer>;

/// The name of a consumer group.
pub type GroupName = Name<Group>;

/// A name that keeps [`NAME_RULE`], of a durable consumer or a consumer group (`K`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name<K> {
    name: String,
    kind: PhantomData<K>,
}

impl<K: Kind> Name<K> {
    /// Parses a name; the error names the field of its kind (`consumer`, `group`).
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        if is_name(name) {
            Ok(Self {
                name: name.to_owned(),
                kind: PhantomData,
            })
        } else {
            Err(InvalidName { kind: K::KIND })
        }
    }

    /// The name named in a request's field, if the field is not empty.
    pub fn parse_field(field: &str) -> Result<Option<Self>, InvalidName> {
        (!field.is_empty()).then(|| Self::parse(field)).transpose()
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl<K: Kind> fmt::Display for Name<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl<K: Kind> fmt::Debug for Name<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(K::TYPE_NAME).field(&self.name).finish()
    }
}

/// A name outside [`NAME_RULE`].
#[derive(Debug, thiserror::Error)]
#[error("{} must be {NAME_RULE}", kind.word())]
pub struct InvalidName {
    /// What the name was for.
    pub kind: NameKind,
}

impl ServiceError for InvalidName {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadRequest
    }

    fn code(&self) -> &'static str {
        match self.kind {
            NameKind::Consumer => "invalid_consumer",
            NameKind::Group => "invalid_group",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_plain_with_dots_only_between_parts() {
        for good in [
            "billing",
            "billing.eu-1",
            "a.b.c",
            "A_b-9",
            &"x".repeat(128),
        ] {
            assert!(is_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".billing",
            "billing.",
            "billing..eu",
            ".",
            "..",
            "bill ing",
            "bill/ing",
            "billing*",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(!is_name(bad), "{bad:?}");
            assert!(ConsumerName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
