//! A JSON answer kept twice: typed, for code and for people, and raw, for `--json`.
//!
//! A client that prints what the node said (the CLI's `--json`) prints the raw value, so fields
//! a newer node adds are not silently dropped by re-serialising the typed subset.

use serde::de::DeserializeOwned;

/// A JSON document as the node sent it, and its typed reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Document<T> {
    /// The typed reading.
    pub parsed: T,
    /// The document as received.
    pub raw: serde_json::Value,
}

impl<T: DeserializeOwned> Document<T> {
    /// Parses `bytes` as JSON, then reads the value as a `T`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Self::from_value(serde_json::from_slice(bytes)?)
    }

    /// Reads `raw` as a `T`, keeping `raw`.
    pub fn from_value(raw: serde_json::Value) -> Result<Self, serde_json::Error> {
        let parsed = T::deserialize(&raw)?;
        Ok(Document { parsed, raw })
    }
}
