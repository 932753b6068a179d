//! NATS subject, stream and consumer names, all built from one prefix
//! (`GRADEFLOW_PREFIX`, default `gradeflow`) so that deployments and parallel
//! test runs sharing one server never see each other's traffic.

/// A prefix that is legal in subjects (one token) and in stream names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    prefix: String,
}

/// A prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix `{0}` must be 1–64 characters of A–Z, a–z, 0–9, `_` or `-`")]
pub struct BadPrefix(pub String);

/// Replaces every character that is not legal inside one subject token.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Names {
    /// The default prefix.
    pub const DEFAULT_PREFIX: &'static str = "gradeflow";

    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, BadPrefix> {
        let prefix = prefix.into();
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self { prefix })
        } else {
            Err(BadPrefix(prefix))
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of all domain events: `<prefix>_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix)
    }

    /// The immutable stream of decision records: `<prefix>_AUDIT`.
    pub fn audit_stream(&self) -> String {
        format!("{}_AUDIT", self.prefix)
    }

    /// The stream that keeps dead letters: `<prefix>_DLQ`.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.prefix)
    }

    /// Subjects the events stream captures: `<prefix>.evt.>`.
    pub fn events_filter(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// Subjects the audit stream captures: `<prefix>.audit.>`.
    pub fn audit_filter(&self) -> String {
        format!("{}.audit.>", self.prefix)
    }

    /// Subjects the dead-letter stream captures: `<prefix>.dlq.>`.
    pub fn dead_letter_filter(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// Where an event is published:
    /// `<prefix>.evt.<service>.<province|_>.<kind>`. The kind keeps its
    /// version suffix, so `grade_decided.v1` spans two tokens.
    pub fn event_subject(&self, service: &str, province: Option<&str>, kind: &str) -> String {
        let kind: Vec<String> = kind.split('.').map(token).collect();
        format!(
            "{}.evt.{}.{}.{}",
            self.prefix,
            token(service),
            province.map(token).unwrap_or_else(|| "_".into()),
            kind.join(".")
        )
    }

    /// Subjects of every event of one service: `<prefix>.evt.<service>.>`.
    pub fn service_events_filter(&self, service: &str) -> String {
        format!("{}.evt.{}.>", self.prefix, token(service))
    }

    /// Where a command is sent: `<prefix>.cmd.<service>.<command>`.
    pub fn command_subject(&self, service: &str, command: &str) -> String {
        format!("{}.cmd.{}.{}", self.prefix, token(service), token(command))
    }

    /// Every command of a service: `<prefix>.cmd.<service>.*`.
    pub fn service_commands_filter(&self, service: &str) -> String {
        format!("{}.cmd.{}.*", self.prefix, token(service))
    }

    /// The queue group of a service's command handlers.
    pub fn queue_group(&self, service: &str) -> String {
        format!("{}-{}", self.prefix, token(service))
    }

    /// Where a decision record is mirrored: `<prefix>.audit.<cycle>`.
    pub fn audit_subject(&self, cycle: &str) -> String {
        format!("{}.audit.{}", self.prefix, token(cycle))
    }

    /// Where a consumer's poison messages go: `<prefix>.dlq.<consumer>`.
    pub fn dead_letter_subject(&self, consumer: &str) -> String {
        format!("{}.dlq.{}", self.prefix, token(consumer))
    }

    /// A durable consumer's name, unique per prefix.
    pub fn durable(&self, consumer: &str) -> String {
        format!("{}-{}", self.prefix, token(consumer))
    }
}

impl Default for Names {
    fn default() -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_built_from_the_prefix() {
        let n = Names::new("t42").unwrap();
        assert_eq!(n.events_stream(), "t42_EVENTS");
        assert_eq!(n.audit_stream(), "t42_AUDIT");
        assert_eq!(n.events_filter(), "t42.evt.>");
        assert_eq!(
            n.event_subject("approval", Some("P.01"), "grade_decided.v1"),
            "t42.evt.approval.P_01.grade_decided.v1"
        );
        assert_eq!(
            n.event_subject("submission", None, "self_review_submitted.v1"),
            "t42.evt.submission._.self_review_submitted.v1"
        );
        assert_eq!(
            n.command_subject("approval", "decide_batch"),
            "t42.cmd.approval.decide_batch"
        );
        assert_eq!(n.audit_subject("c1"), "t42.audit.c1");
    }

    #[test]
    fn a_prefix_that_would_break_subjects_is_refused() {
        for bad in ["", "a.b", "a b", "a>", "a*", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Names::new("gradeflow_test-1").is_ok());
    }
}
