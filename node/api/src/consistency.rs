//! The consistency levels a key/value request may ask for
//! (`?consistency=one|quorum|all|linearizable`).
//!
//! Owns the words and their parsing. What a level means in replies needed out of a replica
//! set is the protocol's (`dht::store::Consistency::required`); the node maps this type onto
//! that one at its HTTP boundary. The API keeps its own type rather than re-exporting the
//! core's so that clients need not link the protocol core, and so that command lines can derive
//! their flag from it (`clap` feature).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many of a key's replicas must answer a read or acknowledge a write. The node's default,
/// when a request names none, is [`Consistency::Quorum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// One replica answers.
    One,
    /// A majority of the replica set answers.
    Quorum,
    /// Every replica answers.
    All,
    /// Reads only: the state a quorum holds, finished first when a write left it on fewer (a
    /// compare-and-set round); no later read can return an older state. Writes refuse it.
    Linearizable,
}

impl Consistency {
    /// Every level, weakest first.
    pub const ALL: [Consistency; 4] =
        [Consistency::One, Consistency::Quorum, Consistency::All, Consistency::Linearizable];

    /// The word in the query string: `one`, `quorum` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
            Consistency::Linearizable => "linearizable",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `consistency` that is none of the words; the node answers it with 400 and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consistency {0:?}: use one, quorum, all or linearizable")]
pub struct UnknownConsistency(pub String);

impl FromStr for Consistency {
    type Err = UnknownConsistency;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Consistency::ALL
            .into_iter()
            .find(|level| level.as_str() == text)
            .ok_or_else(|| UnknownConsistency(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_text_and_json() {
        for level in Consistency::ALL {
            assert_eq!(level.to_string().parse::<Consistency>(), Ok(level));
            let json = serde_json::to_string(&level).expect("serialises");
            assert_eq!(json, format!("\"{level}\""));
            assert_eq!(serde_json::from_str::<Consistency>(&json).expect("parses"), level);
        }
    }

    #[test]
    fn unknown_words_are_refused_with_the_nodes_message() {
        // Case matters: the node has always compared exactly.
        for word in ["most", "", "Quorum", " one"] {
            let error = word.parse::<Consistency>().expect_err("not a level");
            assert_eq!(
                error.to_string(),
                format!("unknown consistency {word:?}: use one, quorum, all or linearizable")
            );
        }
    }
}
