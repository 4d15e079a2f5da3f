//! W3C trace context: a saga is one trace. The frontend starts it (or continues the caller's
//! `traceparent`), each event carries it as a `traceparent` Pub/Sub attribute, and each step's
//! span is a child of the span that published the event it consumes.

use std::fmt;

use uuid::Uuid;

/// The Pub/Sub attribute (and HTTP header) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: u128,
    /// 16 lowercase hex digits.
    pub span_id: u64,
    /// The span this one is a child of, if known.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: Uuid::new_v4().as_u128(),
            span_id: random_span_id(),
            parent_span_id: None,
            sampled: true,
        }
    }

    /// A span in the same trace, child of this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
        }
    }

    /// The child of the context in `traceparent`, or a new trace if it is absent or invalid.
    pub fn continue_from(traceparent: Option<&str>) -> TraceContext {
        traceparent
            .and_then(TraceContext::parse)
            .map_or_else(TraceContext::root, |parent| parent.child())
    }

    /// The parent given by an HTTP request: `traceparent`, or Google's older
    /// `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` (span id in decimal).
    pub fn from_http(traceparent: Option<&str>, cloud: Option<&str>) -> Option<TraceContext> {
        if let Some(parent) = traceparent.and_then(TraceContext::parse) {
            return Some(parent);
        }
        let (trace, rest) = cloud?.split_once('/')?;
        let span = rest.split(';').next()?;
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = span.parse::<u64>().ok().filter(|s| *s != 0)?;
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: !rest.contains("o=0"),
        })
    }

    /// Parses `00-<trace id>-<span id>-<flags>`; all-zero ids are invalid.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: flags & 1 == 1,
        })
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    pub fn parent_span_id_hex(&self) -> Option<String> {
        self.parent_span_id.map(|p| format!("{p:016x}"))
    }
}

/// The `traceparent` value naming this span as the parent of what comes next.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

fn random_span_id() -> u64 {
    // The low half of a random UUID; never zero.
    (Uuid::new_v4().as_u128() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(header).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert!(t.sampled);
        assert_eq!(t.to_string(), header);
    }

    #[test]
    fn a_child_keeps_the_trace_and_points_at_its_parent() {
        let parent = TraceContext::root();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.parent_span_id, Some(parent.span_id));
        let continued = TraceContext::continue_from(Some(&child.to_string()));
        assert_eq!(continued.trace_id, parent.trace_id);
        assert_eq!(continued.parent_span_id, Some(child.span_id));
    }

    #[test]
    fn cloud_run_s_trace_header_is_understood() {
        let t =
            TraceContext::from_http(None, Some("105445aa7843bc8bf206b12000100000/1;o=1")).unwrap();
        assert_eq!(t.trace_id_hex(), "105445aa7843bc8bf206b12000100000");
        assert_eq!(t.span_id, 1);
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t =
            TraceContext::from_http(Some(w3c), Some("105445aa7843bc8bf206b12000100000/1")).unwrap();
        assert_eq!(
            t.trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "traceparent wins"
        );
        assert_eq!(TraceContext::from_http(None, Some("nonsense")), None);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
            assert_eq!(TraceContext::continue_from(Some(bad)).parent_span_id, None);
        }
    }
}
