//! The three JetStream streams every gradeflow deployment needs
//! (`ARCHITECTURE.md` § NATS JetStream), created or checked at start-up:
//!
//! * `<prefix>_EVENTS` on `<prefix>.evt.>`: every domain event, fed by the
//!   outbox relays. File storage; a duplicate window of at least ten minutes,
//!   because the relays re-publish a recent tail on every start and rely on
//!   server-side dedup by `Nats-Msg-Id` to absorb what the stream already has.
//! * `<prefix>_AUDIT` on `<prefix>.audit.>`: decision records. File storage,
//!   `deny_delete` and `deny_purge`, so nobody can take a record back through
//!   the JetStream API.
//! * `<prefix>_DLQ` on `<prefix>.dlq.>`: dead letters of the consumer loops.
//!
//! Every option used here exists in NATS Server 2.9 (the Debian package the
//! development machines run): no stream metadata, compression, subject
//! transforms or first-sequence, which came with 2.10.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
    ErrorCode,
};
use gradeflow_proto::Names;

/// The shortest duplicate window the outbox relay's restart tail can rely on.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How the streams are laid out on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Replicas of each stream: 1 on a single server, 3 on the production
    /// cluster (R3 is what makes acknowledged writes survive a power loss
    /// without `sync_interval: always`).
    pub replicas: usize,
    /// Server-side dedup window of the events and audit streams; at least
    /// [`MIN_DUPLICATE_WINDOW`] and longer than the relay's restart tail age.
    pub duplicate_window: Duration,
    /// How long events are kept; zero keeps them forever. The SQL stores are
    /// the system of record, so this only bounds how far back a new consumer
    /// can start from the stream.
    pub events_max_age: Duration,
    /// How long dead letters are kept; zero keeps them forever (they are in
    /// the stores' dead-letter tables as well).
    pub dead_letter_max_age: Duration,
    /// The cluster the streams are placed in (`None`: the server chooses).
    pub placement_cluster: Option<String>,
    /// Server tags the streams' replicas must be placed on (e.g. a province's
    /// or a data centre's servers); empty: any server.
    pub placement_tags: Vec<String>,
}

impl StreamSettings {
    /// The JetStream placement of the streams, when one is configured.
    pub fn placement(&self) -> Option<jetstream::stream::Placement> {
        if self.placement_cluster.is_none() && self.placement_tags.is_empty() {
            return None;
        }
        Some(jetstream::stream::Placement {
            cluster: self.placement_cluster.clone(),
            tags: self.placement_tags.clone(),
        })
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(15 * 60),
            events_max_age: Duration::ZERO,
            dead_letter_max_age: Duration::ZERO,
            placement_cluster: None,
            placement_tags: Vec::new(),
        }
    }
}

/// Why the streams could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EnsureStreamsError {
    /// The settings themselves are unusable.
    #[error("stream settings: {0}")]
    Settings(String),
    /// A stream exists with a configuration gradeflow cannot work with.
    #[error("stream `{stream}` exists with {field} = {found}, expected {expected}")]
    Mismatch {
        /// The stream's name.
        stream: String,
        /// The configuration field that differs.
        field: &'static str,
        /// What gradeflow needs.
        expected: String,
        /// What the server has.
        found: String,
    },
    /// The server refused or did not answer a create.
    #[error("creating stream `{stream}`")]
    Create {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// The server refused or did not answer a lookup.
    #[error("looking up stream `{stream}`")]
    Get {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        #[source]
        source: jetstream::context::GetStreamError,
    },
}

/// The configuration of `<prefix>_EVENTS`.
pub fn events_stream_config(names: &Names, settings: &StreamSettings) -> Config {
    Config {
        name: names.events_stream(),
        description: Some("gradeflow domain events, fed by the outbox relays".into()),
        subjects: vec![names.events_filter()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        max_age: settings.events_max_age,
        // Direct get (2.9+) lets the audit and replay tools read single
        // messages from any replica without a consumer.
        allow_direct: true,
        placement: settings.placement(),
        ..Default::default()
    }
}

/// The configuration of `<prefix>_AUDIT`: nothing in it can be deleted or
/// purged through the JetStream API.
pub fn audit_stream_config(names: &Names, settings: &StreamSettings) -> Config {
    Config {
        name: names.audit_stream(),
        description: Some(
            "gradeflow decision records (immutable mirror of the decision log)".into(),
        ),
        subjects: vec![names.audit_filter()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        placement: settings.placement(),
        ..Default::default()
    }
}

/// The configuration of `<prefix>_DLQ`.
pub fn dead_letter_stream_config(names: &Names, settings: &StreamSettings) -> Config {
    Config {
        name: names.dead_letter_stream(),
        description: Some("gradeflow dead letters of the consumer loops".into()),
        subjects: vec![names.dead_letter_filter()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: settings.replicas,
        duplicate_window: Duration::from_secs(2 * 60),
        max_age: settings.dead_letter_max_age,
        placement: settings.placement(),
        ..Default::default()
    }
}

/// Creates the events, audit and dead-letter streams, or checks that the
/// existing ones are compatible. Idempotent: run it at every start of every
/// service; concurrent runs are fine (a lost creation race falls back to the
/// check).
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    settings: &StreamSettings,
) -> Result<(), EnsureStreamsError> {
    if settings.duplicate_window < MIN_DUPLICATE_WINDOW {
        return Err(EnsureStreamsError::Settings(format!(
            "duplicate window {:?} is shorter than the {:?} the outbox relay relies on",
            settings.duplicate_window, MIN_DUPLICATE_WINDOW
        )));
    }
    if settings.replicas == 0 {
        return Err(EnsureStreamsError::Settings(
            "replicas must be at least 1".into(),
        ));
    }
    for wanted in [
        events_stream_config(names, settings),
        audit_stream_config(names, settings),
        dead_letter_stream_config(names, settings),
    ] {
        ensure_stream(js, wanted).await?;
    }
    Ok(())
}

/// Creates one stream or checks the existing one.
async fn ensure_stream(js: &jetstream::Context, wanted: Config) -> Result<(), EnsureStreamsError> {
    let name = wanted.name.clone();
    // Look up first: creating with a config that differs only in a harmless
    // way (a longer duplicate window set by an operator) would be refused.
    if let Some(found) = existing_config(js, &name).await? {
        return check_compatible(&wanted, &found);
    }
    match js.create_stream(wanted.clone()).await {
        Ok(_) => {
            tracing::info!(stream = %name, "bus.streams.created");
            Ok(())
        }
        Err(err) => match err.kind() {
            // Another process created it between our lookup and our create.
            CreateStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NAME_EXIST =>
            {
                match existing_config(js, &name).await? {
                    Some(found) => check_compatible(&wanted, &found),
                    None => Err(EnsureStreamsError::Create {
                        stream: name,
                        source: err,
                    }),
                }
            }
            _ => Err(EnsureStreamsError::Create {
                stream: name,
                source: err,
            }),
        },
    }
}

/// The configuration of an existing stream, or `None` when there is none.
async fn existing_config(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<Config>, EnsureStreamsError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(EnsureStreamsError::Get {
                stream: name.to_owned(),
                source: err,
            }),
        },
    }
}

/// Whether an existing stream can serve as `wanted`. Only what gradeflow's
/// guarantees depend on is compared; descriptions and limits an operator
/// tuned are left alone.
fn check_compatible(wanted: &Config, found: &Config) -> Result<(), EnsureStreamsError> {
    let mismatch = |field: &'static str, expected: String, found: String| {
        Err(EnsureStreamsError::Mismatch {
            stream: wanted.name.clone(),
            field,
            expected,
            found,
        })
    };
    for subject in &wanted.subjects {
        if !found.subjects.contains(subject) {
            return mismatch(
                "subjects",
                format!("{:?}", wanted.subjects),
                format!("{:?}", found.subjects),
            );
        }
    }
    if found.storage != wanted.storage {
        return mismatch(
            "storage",
            format!("{:?}", wanted.storage),
            format!("{:?}", found.storage),
        );
    }
    if found.retention != wanted.retention {
        return mismatch(
            "retention",
            format!("{:?}", wanted.retention),
            format!("{:?}", found.retention),
        );
    }
    if found.num_replicas != wanted.num_replicas {
        return mismatch(
            "num_replicas",
            wanted.num_replicas.to_string(),
            found.num_replicas.to_string(),
        );
    }
    // A longer window only absorbs more duplicates; a shorter one breaks the
    // relay's restart tail.
    if found.duplicate_window < wanted.duplicate_window {
        return mismatch(
            "duplicate_window",
            format!("at least {:?}", wanted.duplicate_window),
            format!("{:?}", found.duplicate_window),
        );
    }
    if wanted.deny_delete && !found.deny_delete {
        return mismatch("deny_delete", "true".into(), "false".into());
    }
    if wanted.deny_purge && !found.deny_purge {
        return mismatch("deny_purge", "true".into(), "false".into());
    }
    if found.sealed {
        return mismatch("sealed", "false".into(), "true".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_stream_is_placed_where_the_settings_say_and_anywhere_by_default() {
        let names = Names::new("t1").unwrap();
        let anywhere = StreamSettings::default();
        assert!(events_stream_config(&names, &anywhere).placement.is_none());
        let placed = StreamSettings {
            placement_cluster: Some("trung-uong".into()),
            placement_tags: vec!["p01".into(), "ssd".into()],
            ..StreamSettings::default()
        };
        for config in [
            events_stream_config(&names, &placed),
            audit_stream_config(&names, &placed),
            dead_letter_stream_config(&names, &placed),
        ] {
            let p = config.placement.unwrap();
            assert_eq!(p.cluster.as_deref(), Some("trung-uong"));
            assert_eq!(p.tags, vec!["p01".to_owned(), "ssd".to_owned()]);
        }
    }

    #[test]
    fn a_stream_with_a_shorter_duplicate_window_is_named_as_a_mismatch() {
        let names = Names::new("t1").unwrap();
        let wanted = events_stream_config(&names, &StreamSettings::default());
        let mut found = wanted.clone();
        assert!(check_compatible(&wanted, &found).is_ok());
        found.duplicate_window = Duration::from_secs(120);
        let err = check_compatible(&wanted, &found).unwrap_err();
        assert!(
            matches!(
                err,
                EnsureStreamsError::Mismatch {
                    field: "duplicate_window",
                    ..
                }
            ),
            "{err}"
        );
        found.duplicate_window = Duration::from_secs(3600);
        assert!(check_compatible(&wanted, &found).is_ok());
    }

    #[test]
    fn an_audit_stream_that_allows_deletes_is_refused() {
        let names = Names::new("t1").unwrap();
        let wanted = audit_stream_config(&names, &StreamSettings::default());
        let mut found = wanted.clone();
        found.deny_delete = false;
        let err = check_compatible(&wanted, &found).unwrap_err();
        assert!(
            matches!(
                err,
                EnsureStreamsError::Mismatch {
                    field: "deny_delete",
                    ..
                }
            ),
            "{err}"
        );
    }
}
