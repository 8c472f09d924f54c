//! Decides, from the statuses of a known set of nodes, whether they form one correct ring.
//!
//! Correct means what `overlay cluster up` promises and the end-to-end tests wait for: every
//! expected node answers, is a member, and its first successor is the next node by ring id and
//! its predecessor the previous one. Pure: the caller fetches the statuses, this only compares
//! them, so it is unit-tested.

use crate::ring::Status;

/// What one node reported about itself and its neighbours, reduced to what the check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourView {
    /// Its peer id.
    pub peer_id: String,
    /// Its ring id, 40 hex digits.
    pub ring_id: String,
    /// Whether it is a ring member.
    pub member: bool,
    /// Its predecessor's peer id.
    pub predecessor: Option<String>,
    /// Its first successor's peer id.
    pub successor: Option<String>,
}

impl From<&Status> for NeighbourView {
    fn from(status: &Status) -> Self {
        NeighbourView {
            peer_id: status.peer_id.clone(),
            ring_id: status.ring_id.clone(),
            member: status.member,
            predecessor: status.predecessor.as_ref().map(|node| node.peer_id.clone()),
            successor: status.successors.first().map(|node| node.peer_id.clone()),
        }
    }
}

/// The verdict on a set of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingCheck {
    /// Nodes that should be in the ring.
    pub expected: usize,
    /// Nodes that answered their status.
    pub answering: usize,
    /// Answering nodes whose successor and predecessor are both right.
    pub correct: usize,
    /// One short sentence per thing that is wrong, for progress and error messages.
    pub problems: Vec<String>,
}

impl RingCheck {
    /// Whether every expected node answered and has the right neighbours.
    pub fn is_correct(&self) -> bool {
        self.answering == self.expected && self.correct == self.expected && self.problems.is_empty()
    }

    /// A one-line summary such as `4/5 nodes answer, 3/5 have the right neighbours`.
    pub fn summary(&self) -> String {
        format!(
            "{}/{} nodes answer, {}/{} have the right successor and predecessor",
            self.answering, self.expected, self.correct, self.expected
        )
    }
}

/// Checks the statuses of the nodes that answered against `expected` nodes.
pub fn check_statuses<'a>(expected: usize, statuses: impl IntoIterator<Item = &'a Status>) -> RingCheck {
    let views: Vec<NeighbourView> = statuses.into_iter().map(NeighbourView::from).collect();
    check_ring(expected, &views)
}

/// Checks `views` (one per node that answered) against `expected` nodes.
pub fn check_ring(expected: usize, views: &[NeighbourView]) -> RingCheck {
    let mut problems = Vec::new();
    let mut ordered: Vec<(Vec<u8>, &NeighbourView)> = Vec::with_capacity(views.len());
    for view in views {
        match parse_ring_id(&view.ring_id) {
            Some(id) => ordered.push((id, view)),
            None => {
                problems.push(format!("node {} reports a malformed ring id {:?}", view.peer_id, view.ring_id))
            }
        }
    }
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in ordered.windows(2) {
        if pair[0].0 == pair[1].0 {
            problems.push(format!(
                "nodes {} and {} share ring id {}",
                pair[0].1.peer_id, pair[1].1.peer_id, pair[0].1.ring_id
            ));
        }
    }

    let count = ordered.len();
    let mut correct = 0;
    for (position, (_, view)) in ordered.iter().enumerate() {
        let next = &ordered[(position + 1) % count].1.peer_id;
        let previous = &ordered[(position + count - 1) % count].1.peer_id;
        let alone = count == 1;
        // A lone node is its own successor; whether it reports itself or nothing as its
        // predecessor and successor is the node's choice, and both are right.
        let successor_right = match &view.successor {
            Some(successor) => successor == next,
            None => alone,
        };
        let predecessor_right = match &view.predecessor {
            Some(predecessor) => predecessor == previous,
            None => alone,
        };
        if !view.member {
            problems.push(format!("node {} is not a ring member yet", view.peer_id));
        } else if successor_right && predecessor_right {
            correct += 1;
        } else {
            if !successor_right {
                problems.push(format!(
                    "node {} has successor {} but should have {next}",
                    view.peer_id,
                    view.successor.as_deref().unwrap_or("none")
                ));
            }
            if !predecessor_right {
                problems.push(format!(
                    "node {} has predecessor {} but should have {previous}",
                    view.peer_id,
                    view.predecessor.as_deref().unwrap_or("none")
                ));
            }
        }
    }
    if views.len() < expected {
        problems.push(format!("{} of {expected} nodes do not answer", expected - views.len()));
    }
    RingCheck { expected, answering: views.len(), correct, problems }
}

/// Ring ids are 40 hex digits; parsing them makes ordering independent of letter case.
fn parse_ring_id(text: &str) -> Option<Vec<u8>> {
    if text.len() != 40 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| text.get(at..at + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first_byte: u8) -> String {
        format!("{first_byte:02x}{}", "0".repeat(38))
    }

    fn view(name: &str, ring: u8, predecessor: Option<&str>, successor: Option<&str>) -> NeighbourView {
        NeighbourView {
            peer_id: name.to_owned(),
            ring_id: id(ring),
            member: true,
            predecessor: predecessor.map(str::to_owned),
            successor: successor.map(str::to_owned),
        }
    }

    #[test]
    fn a_correct_ring_in_any_input_order_passes() {
        // Ring order by id: b (0x10), c (0x80), a (0xf0).
        let views = [
            view("a", 0xf0, Some("c"), Some("b")),
            view("b", 0x10, Some("a"), Some("c")),
            view("c", 0x80, Some("b"), Some("a")),
        ];
        let check = check_ring(3, &views);
        assert!(check.is_correct(), "{check:?}");
        assert_eq!((check.answering, check.correct), (3, 3));
    }

    #[test]
    fn a_wrong_successor_is_reported() {
        let views = [
            view("a", 0x10, Some("c"), Some("c")),
            view("b", 0x80, Some("a"), Some("c")),
            view("c", 0xf0, Some("b"), Some("a")),
        ];
        let check = check_ring(3, &views);
        assert!(!check.is_correct());
        assert_eq!(check.correct, 2);
        assert!(check.problems.iter().any(|p| p.contains("node a has successor c but should have b")));
    }

    #[test]
    fn a_missing_node_fails_the_check() {
        let views = [view("a", 0x10, Some("b"), Some("b")), view("b", 0x80, Some("a"), Some("a"))];
        let check = check_ring(3, &views);
        assert!(!check.is_correct());
        assert_eq!(check.correct, 2);
        assert!(check.problems.iter().any(|p| p.contains("1 of 3 nodes do not answer")));
    }

    #[test]
    fn a_node_that_is_not_yet_a_member_fails_the_check() {
        let mut joining = view("b", 0x80, Some("a"), Some("a"));
        joining.member = false;
        let check = check_ring(2, &[view("a", 0x10, Some("b"), Some("b")), joining]);
        assert!(!check.is_correct());
        assert_eq!(check.correct, 1);
    }

    #[test]
    fn a_lone_node_may_point_at_itself_or_at_nothing() {
        assert!(check_ring(1, &[view("a", 0x10, None, None)]).is_correct());
        assert!(check_ring(1, &[view("a", 0x10, Some("a"), Some("a"))]).is_correct());
        assert!(!check_ring(1, &[view("a", 0x10, Some("x"), Some("a"))]).is_correct());
    }

    #[test]
    fn a_two_node_ring_needs_each_to_point_at_the_other() {
        assert!(
            check_ring(2, &[view("a", 1, Some("b"), Some("b")), view("b", 2, Some("a"), Some("a"))])
                .is_correct()
        );
        assert!(
            !check_ring(2, &[view("a", 1, None, Some("b")), view("b", 2, Some("a"), Some("a"))]).is_correct()
        );
    }

    #[test]
    fn ring_ids_compare_numerically_regardless_of_case() {
        let upper = NeighbourView { ring_id: id(0xab).to_uppercase(), ..view("b", 0, Some("a"), Some("a")) };
        let views = [view("a", 0x20, Some("b"), Some("b")), upper];
        assert!(check_ring(2, &views).is_correct());
    }

    #[test]
    fn malformed_and_duplicate_ids_are_problems() {
        let bad = NeighbourView { ring_id: "xyz".to_owned(), ..view("b", 0, None, None) };
        assert!(!check_ring(2, &[view("a", 1, None, None), bad]).is_correct());
        let twins = [view("a", 7, Some("b"), Some("b")), view("b", 7, Some("a"), Some("a"))];
        let check = check_ring(2, &twins);
        assert!(check.problems.iter().any(|p| p.contains("share ring id")));
    }
}
