//! 160-bit ring identifiers and the interval arithmetic of the Chord ring.
//!
//! Every position on the ring — a node, a key, a multicast group — is an [`Id`]: a 160-bit unsigned
//! integer stored big-endian, so the derived `Ord` is numeric order. All ring reasoning goes through
//! the interval predicates here, which wrap modulo 2^160; nothing else in the crate compares ids to
//! decide ring membership.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha1::{Digest, Sha1};

/// Number of bits in an identifier, and so the number of fingers in a finger table.
pub const ID_BITS: usize = 160;

/// Number of bytes in an identifier.
pub const ID_BYTES: usize = ID_BITS / 8;

/// A position on the 2^160 identifier ring.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id([u8; ID_BYTES]);

/// Ids order as big-endian numbers, that is byte by byte. Compared as two `u64`s and a `u32`
/// rather than through the derived slice comparison, which calls `memcmp`: id comparisons were a
/// tenth of a 100,000-node simulation (issue 14).
impl Ord for Id {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ordering_key().cmp(&other.ordering_key())
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    /// The id as numbers that compare as its bytes do.
    fn ordering_key(&self) -> (u64, u64, u32) {
        let b = &self.0;
        let high = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let middle = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        let low = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        (high, middle, low)
    }

    /// The identifier 0.
    pub const ZERO: Id = Id([0; ID_BYTES]);
    /// The identifier 2^160 − 1.
    pub const MAX: Id = Id([0xff; ID_BYTES]);

    /// Wraps raw big-endian bytes.
    pub const fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Id(bytes)
    }

    /// The big-endian bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// SHA-1 of `bytes`: how node ids (from address bytes), key ids and group ids are made.
    pub fn hash(bytes: &[u8]) -> Self {
        Id(Sha1::digest(bytes).into())
    }

    /// `self + other` modulo 2^160.
    pub fn wrapping_add(&self, other: &Id) -> Id {
        let mut out = [0u8; ID_BYTES];
        let mut carry = 0u16;
        for i in (0..ID_BYTES).rev() {
            let sum = u16::from(self.0[i]) + u16::from(other.0[i]) + carry;
            out[i] = sum as u8; // low byte; the high bit carries on
            carry = sum >> 8;
        }
        Id(out)
    }

    /// `self − other` modulo 2^160.
    pub fn wrapping_sub(&self, other: &Id) -> Id {
        let mut out = [0u8; ID_BYTES];
        let mut borrow = 0i16;
        for i in (0..ID_BYTES).rev() {
            let mut diff = i16::from(self.0[i]) - i16::from(other.0[i]) - borrow;
            borrow = 0;
            if diff < 0 {
                diff += 256;
                borrow = 1;
            }
            out[i] = diff as u8; // 0..=255 after the adjustment above
        }
        Id(out)
    }

    /// 2^`exponent` for `exponent` < 160.
    pub fn pow2(exponent: usize) -> Id {
        assert!(exponent < ID_BITS, "2^{exponent} does not fit in a 160-bit id");
        let mut out = [0u8; ID_BYTES];
        out[ID_BYTES - 1 - exponent / 8] = 1 << (exponent % 8);
        Id(out)
    }

    /// Start of finger `i`: `self + 2^i` modulo 2^160.
    pub fn finger_start(&self, i: usize) -> Id {
        self.wrapping_add(&Id::pow2(i))
    }

    /// Clockwise distance from `self` to `to`: `to − self` modulo 2^160.
    pub fn distance_to(&self, to: &Id) -> Id {
        to.wrapping_sub(self)
    }

    /// Whether `self` lies in the open interval `(a, b)` walking clockwise from `a`.
    ///
    /// When `a == b` the interval is the whole ring except `a`.
    pub fn in_open(&self, a: &Id, b: &Id) -> bool {
        if a < b {
            a < self && self < b
        } else {
            // Wraps past zero (or a == b: everything but a).
            self > a || self < b
        }
    }

    /// Whether `self` lies in the half-open interval `(a, b]` walking clockwise from `a`.
    ///
    /// When `a == b` the interval is the whole ring.
    pub fn in_open_closed(&self, a: &Id, b: &Id) -> bool {
        if a < b {
            a < self && self <= b
        } else {
            // Wraps past zero (or a == b: the whole ring).
            a == b || self > a || self <= b
        }
    }

    /// The first 8 hex digits: enough to tell nodes apart in logs and tables.
    pub fn short(&self) -> ShortId {
        ShortId(*self)
    }

    /// Parses 40 hex digits.
    pub fn from_hex(text: &str) -> Option<Id> {
        if text.len() != 2 * ID_BYTES || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; ID_BYTES];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Display adapter printing the first 8 hex digits of an [`Id`].
#[derive(Clone, Copy, Debug)]
pub struct ShortId(Id);

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

// On the wire an id is a CBOR byte string of exactly 20 bytes (not an array of 20 integers).
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of {ID_BYTES} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Id, E> {
                let bytes: [u8; ID_BYTES] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Id(bytes))
            }
        }
        deserializer.deserialize_bytes(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = Id> {
        prop_oneof![
            any::<[u8; ID_BYTES]>().prop_map(Id),
            Just(Id::ZERO),
            Just(Id::MAX),
            (0..ID_BITS).prop_map(Id::pow2),
        ]
    }

    /// Reference model: ids as big integers held in a u128 pair would be too clever; instead check
    /// interval membership against distances, which is the definition.
    fn open_by_distance(x: &Id, a: &Id, b: &Id) -> bool {
        let dx = a.distance_to(x);
        let db = a.distance_to(b);
        if a == b { x != a } else { dx != Id::ZERO && dx < db }
    }

    proptest! {
        #[test]
        fn ids_order_as_their_bytes(a in id(), b in id()) {
            prop_assert_eq!(a.cmp(&b), a.0.cmp(&b.0));
        }

        #[test]
        fn add_then_sub_is_identity(a in id(), b in id()) {
            prop_assert_eq!(a.wrapping_add(&b).wrapping_sub(&b), a);
        }

        #[test]
        fn addition_commutes(a in id(), b in id()) {
            prop_assert_eq!(a.wrapping_add(&b), b.wrapping_add(&a));
        }

        #[test]
        fn distance_there_and_back_sums_to_zero(a in id(), b in id()) {
            prop_assert_eq!(a.distance_to(&b).wrapping_add(&b.distance_to(&a)), Id::ZERO);
        }

        #[test]
        fn open_interval_matches_distance_definition(x in id(), a in id(), b in id()) {
            prop_assert_eq!(x.in_open(&a, &b), open_by_distance(&x, &a, &b));
        }

        #[test]
        fn open_closed_is_open_plus_endpoint(x in id(), a in id(), b in id()) {
            let expected = if a == b { true } else { x.in_open(&a, &b) || x == b };
            prop_assert_eq!(x.in_open_closed(&a, &b), expected);
        }

        #[test]
        fn endpoints_are_excluded_from_open(a in id(), b in id()) {
            prop_assert!(!a.in_open(&a, &b));
            prop_assert!(!b.in_open(&a, &b));
        }

        #[test]
        fn every_id_is_in_exactly_one_of_two_complementary_arcs(x in id(), a in id(), b in id()) {
            prop_assume!(a != b);
            // (a, b] and (b, a] partition the ring.
            prop_assert!(x.in_open_closed(&a, &b) ^ x.in_open_closed(&b, &a));
        }

        #[test]
        fn finger_start_is_power_of_two_away(n in id(), i in 0..ID_BITS) {
            prop_assert_eq!(n.distance_to(&n.finger_start(i)), Id::pow2(i));
        }

        #[test]
        fn hex_round_trips(a in id()) {
            prop_assert_eq!(Id::from_hex(&a.to_string()), Some(a));
        }

        #[test]
        fn cbor_round_trips(a in id()) {
            let mut buf = Vec::new();
            ciborium::into_writer(&a, &mut buf).expect("encoding to a Vec cannot fail");
            prop_assert_eq!(buf.len(), 1 + ID_BYTES, "an id is a 20-byte CBOR byte string (1-byte header)");
            let back: Id = ciborium::from_reader(buf.as_slice()).expect("valid encoding");
            prop_assert_eq!(back, a);
        }
    }

    #[test]
    fn wrap_across_zero() {
        let one = Id::pow2(0);
        assert_eq!(Id::MAX.wrapping_add(&one), Id::ZERO);
        assert_eq!(Id::ZERO.wrapping_sub(&one), Id::MAX);
        // (MAX, 1] contains 0 and 1 but not MAX.
        assert!(Id::ZERO.in_open_closed(&Id::MAX, &one));
        assert!(one.in_open_closed(&Id::MAX, &one));
        assert!(!Id::MAX.in_open_closed(&Id::MAX, &one));
        // The largest finger reaches half way round.
        assert_eq!(Id::ZERO.finger_start(ID_BITS - 1).as_bytes()[0], 0x80);
    }

    #[test]
    fn sha1_matches_known_vector() {
        // SHA-1("abc") from FIPS 180-1.
        assert_eq!(Id::hash(b"abc").to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn short_bytes_are_refused() {
        let mut buf = Vec::new();
        ciborium::into_writer(&serde_bytes_like(&[1, 2, 3]), &mut buf).expect("vec write");
        assert!(ciborium::from_reader::<Id, _>(buf.as_slice()).is_err());
    }

    fn serde_bytes_like(bytes: &[u8]) -> ciborium::Value {
        ciborium::Value::Bytes(bytes.to_vec())
    }
}
