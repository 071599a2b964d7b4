//! The W3C Trace Context `traceparent` header.

use std::fmt;

/// Longest `traceparent` value accepted (future versions may append fields).
pub const MAX_TRACEPARENT_LEN: usize = 512;

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// The value is longer than [`MAX_TRACEPARENT_LEN`].
    #[error("traceparent is {0} bytes long, more than {MAX_TRACEPARENT_LEN}")]
    TooLong(usize),
    /// The value does not follow `vv-<32 hex>-<16 hex>-ff` in lower-case hex.
    #[error("malformed traceparent")]
    Syntax,
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is invalid")]
    InvalidVersion,
    /// The trace id or the parent id is all zeros.
    #[error("traceparent id is all zeros")]
    ZeroId,
}

/// A `traceparent` value: `00-<trace id>-<parent id>-<flags>`.
///
/// HBONE clients send a random trace id and parent id per downstream connection, with
/// flags `00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    version: u8,
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// A version-00 value. Fails if either id is zero.
    pub fn new(trace_id: u128, parent_id: u64, flags: u8) -> Result<Self, TraceParentError> {
        if trace_id == 0 || parent_id == 0 {
            return Err(TraceParentError::ZeroId);
        }
        Ok(Self {
            version: 0,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A version-00 value with random ids from `rng` and flags `00`.
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let trace_id = rng.random::<u128>().max(1);
        let parent_id = rng.random::<u64>().max(1);
        Self {
            version: 0,
            trace_id,
            parent_id,
            flags: 0,
        }
    }

    /// The version byte.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The 8-byte parent (span) id.
    pub fn parent_id(&self) -> u64 {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Parses a value. Version 00 must be exactly 55 characters; higher versions may
    /// append `-`-separated fields, which are ignored.
    pub fn parse(s: &str) -> Result<Self, TraceParentError> {
        if s.len() > MAX_TRACEPARENT_LEN {
            return Err(TraceParentError::TooLong(s.len()));
        }
        let b = s.as_bytes();
        let field = |from: usize, len: usize| -> Result<&str, TraceParentError> {
            let f = b.get(from..from + len).ok_or(TraceParentError::Syntax)?;
            if !f.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(TraceParentError::Syntax);
            }
            // Only ASCII hex digits, so valid UTF-8.
            std::str::from_utf8(f).map_err(|_| TraceParentError::Syntax)
        };
        let dash = |at: usize| {
            if b.get(at) == Some(&b'-') {
                Ok(())
            } else {
                Err(TraceParentError::Syntax)
            }
        };
        let version = u8::from_str_radix(field(0, 2)?, 16).map_err(|_| TraceParentError::Syntax)?;
        if version == 0xff {
            return Err(TraceParentError::InvalidVersion);
        }
        dash(2)?;
        let trace_id =
            u128::from_str_radix(field(3, 32)?, 16).map_err(|_| TraceParentError::Syntax)?;
        dash(35)?;
        let parent_id =
            u64::from_str_radix(field(36, 16)?, 16).map_err(|_| TraceParentError::Syntax)?;
        dash(52)?;
        let flags = u8::from_str_radix(field(53, 2)?, 16).map_err(|_| TraceParentError::Syntax)?;
        match (version, b.len()) {
            (_, 55) => {}
            (0, _) => return Err(TraceParentError::Syntax),
            _ => dash(55)?,
        }
        if trace_id == 0 || parent_id == 0 {
            return Err(TraceParentError::ZeroId);
        }
        Ok(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}-{:032x}-{:016x}-{:02x}",
            self.version, self.trace_id, self.parent_id, self.flags
        )
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_example() {
        let s = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let t = TraceParent::parse(s).unwrap();
        assert_eq!(t.trace_id(), 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(t.parent_id(), 0xb7ad6b7169203331);
        assert_eq!(t.flags(), 1);
        assert_eq!(t.to_string(), s);
    }

    #[test]
    fn random_is_valid() {
        let mut rng = rand::rng();
        let t = TraceParent::random(&mut rng);
        let s = t.to_string();
        assert_eq!(s.len(), 55);
        assert!(s.starts_with("00-") && s.ends_with("-00"));
        assert_eq!(TraceParent::parse(&s).unwrap(), t);
    }

    #[test]
    fn versions_and_refusals() {
        let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra";
        assert_eq!(TraceParent::parse(future).unwrap().version(), 1);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(TraceParent::new(0, 1, 0), Err(TraceParentError::ZeroId));
    }
}
