//! Validated topic names. Topic names never become object keys, but they are still
//! validated strictly so that logs, metrics and future per-topic keys are safe.

use std::fmt;
use std::sync::Arc;

/// Longest allowed topic name (the same bound Kafka uses).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("topic name must not be empty")]
    Empty,
    #[error("topic name is {0} characters long; the limit is {MAX_TOPIC_NAME_LEN}")]
    TooLong(usize),
    #[error("topic name must not be '.' or '..'")]
    Dots,
    #[error("topic name contains {0:?}; allowed characters are A-Z a-z 0-9 . _ -")]
    BadChar(char),
}

/// A topic name made only of `[A-Za-z0-9._-]`, 1..=249 characters, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        if s.len() > MAX_TOPIC_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if s == "." || s == ".." {
            return Err(NameError::Dots);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["orders", "a", "A-b_c.d", "x".repeat(249).as_str(), "..."] {
            assert!(TopicName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(TopicName::new(""), Err(NameError::Empty));
        assert_eq!(TopicName::new("."), Err(NameError::Dots));
        assert_eq!(TopicName::new(".."), Err(NameError::Dots));
        assert_eq!(TopicName::new("../x"), Err(NameError::BadChar('/')));
        assert_eq!(TopicName::new("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(TopicName::new("tópico"), Err(NameError::BadChar('ó')));
        assert_eq!(
            TopicName::new(&"x".repeat(250)),
            Err(NameError::TooLong(250))
        );
    }
}
