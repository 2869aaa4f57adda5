//! The configuration table: every limit ringmx enforces, with its default, its allowed range and the reason for it.
//!
//! Postfix keeps its limits as `{name, default, min, max}` table entries; this module does the
//! same with one macro invocation, so a limit cannot exist without a range and a reason. The
//! TOML keys are the field names. A value outside its range is refused at start with a message
//! naming the key, the value and the range (see [`Config::validate`]).

use serde::Deserialize;
use std::fmt;

/// How the DATA receiver treats a line feed that is not preceded by a carriage return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLf {
    /// Store a bare LF as CRLF and treat it as a line end (Postfix ≥ 3.9 `normalize`). The end
    /// of data is still only `<CR><LF>.<CR><LF>`, so no smuggling is possible.
    Normalize,
    /// Refuse a message that contains a bare LF, after its end (`550 5.5.2`).
    Reject,
}

macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $min:expr, $max:expr; )*) => {
        /// Every numeric limit, each a named value with a default and a range (see the table in
        /// this module's source and in README.md).
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $name: $default, )* }
            }
        }

        impl Limits {
            /// The table itself: name, default, min, max and the documentation of each limit.
            pub const TABLE: &'static [LimitSpec] = &[
                $( LimitSpec {
                    name: stringify!($name),
                    default: $default as u64,
                    min: $min as u64,
                    max: $max as u64,
                    doc: concat!($($doc, "\n"),*),
                }, )*
            ];

            fn values(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name as u64), )* ]
            }
        }
    };
}

/// One row of the limits table.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub doc: &'static str,
}

limits! {
    /// Longest command line in octets, CRLF included. RFC 5321 §4.5.3.1.4: 512.
    max_command_line: usize = 512, 512, 65536;
    /// Longest text line of a message in octets, CRLF included, not counting a stuffing dot.
    /// RFC 5321 §4.5.3.1.6: 1000. A longer line gets the message refused after its end.
    max_text_line: usize = 1000, 1000, 1 << 20;
    /// Largest message in octets, advertised as SIZE (RFC 1870). 25 MiB is common practice.
    max_message_size: u64 = 25 << 20, 1024, 1 << 30;
    /// Recipients per transaction. RFC 5321 §4.5.3.1.8: at least 100 must be accepted.
    max_recipients: usize = 100, 100, 100_000;
    /// Error replies before the session is ended with 421 (Postfix `smtpd_hard_error_limit`).
    max_errors: u32 = 20, 1, 1000;
    /// Seconds a session may wait for the next command. RFC 5321 §4.5.3.2.7: 5 minutes.
    command_timeout_secs: u64 = 300, 1, 3600;
    /// Seconds between two data blocks during DATA or BDAT. RFC 5321 §4.5.3.2.5/6: 3 minutes.
    data_timeout_secs: u64 = 180, 1, 3600;
    /// Seconds the storage may take to commit a message before the session gives up with 451.
    /// RFC 5321 §4.5.3.2.8: a client waits 10 minutes for the reply to the end of data.
    commit_timeout_secs: u64 = 600, 1, 3600;
    /// Reply octets a session may hold before it stops reading input until the client reads
    /// its replies (RFC 2920 §3.1 lets the client pipeline; this keeps memory bounded).
    max_reply_backlog: usize = 16384, 1024, 1 << 20;
}

/// Everything the protocol engine needs to know about the operator's choices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtoConfig {
    /// The name in the greeting, the HELO/EHLO reply and the `Received:` header.
    pub hostname: String,
    /// Policy for a bare LF inside message data.
    pub bare_lf: BareLf,
    /// The numeric limits.
    #[serde(flatten)]
    pub limits: Limits,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        ProtoConfig {
            hostname: "localhost".to_string(),
            bare_lf: BareLf::Normalize,
            limits: Limits::default(),
        }
    }
}

/// A value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config key `{}` = {} is outside its allowed range {}..={}",
            self.key, self.value, self.min, self.max
        )
    }
}

impl std::error::Error for RangeError {}

impl Limits {
    /// Checks every value against its range; the first one outside is reported.
    pub fn validate(&self) -> Result<(), RangeError> {
        for ((key, value), spec) in self.values().into_iter().zip(Self::TABLE) {
            if value < spec.min || value > spec.max {
                return Err(RangeError {
                    key,
                    value,
                    min: spec.min,
                    max: spec.max,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_inside_their_ranges() {
        Limits::default().validate().unwrap();
        for spec in Limits::TABLE {
            assert!(
                spec.min <= spec.default && spec.default <= spec.max,
                "{}",
                spec.name
            );
            assert!(!spec.doc.is_empty(), "{} has no reason", spec.name);
        }
    }

    #[test]
    fn out_of_range_names_key_value_and_range() {
        let limits = Limits {
            max_command_line: 100,
            ..Limits::default()
        };
        let err = limits.validate().unwrap_err();
        assert_eq!(err.key, "max_command_line");
        assert_eq!(
            err.to_string(),
            "config key `max_command_line` = 100 is outside its allowed range 512..=65536"
        );
    }
}
