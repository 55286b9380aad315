//! Owned strings without a heap allocation when short: the string values the book keeps and
//! copies into every row (`"ACTIVE"`, market ids) fit inline.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INLINE: usize = 22;

#[derive(Clone)]
pub enum SmallString {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl SmallString {
    pub fn as_str(&self) -> &str {
        match self {
            // SAFETY: inline bytes are always copied from a `&str` of exactly `len` bytes.
            SmallString::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..*len as usize])
            },
            SmallString::Heap(text) => text,
        }
    }
}

impl From<&str> for SmallString {
    fn from(text: &str) -> SmallString {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            SmallString::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            SmallString::Heap(text.into())
        }
    }
}

impl From<String> for SmallString {
    fn from(text: String) -> SmallString {
        if text.len() <= INLINE {
            SmallString::from(text.as_str())
        } else {
            SmallString::Heap(text.into_boxed_str())
        }
    }
}

impl std::ops::Deref for SmallString {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for SmallString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

impl Serialize for SmallString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SmallString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SmallString, D::Error> {
        Ok(SmallString::from(String::deserialize(deserializer)?))
    }
}
