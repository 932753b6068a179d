//! Typed identifiers. Every id that crosses a function boundary is one of these
//! newtypes, never a bare `Uuid`, so an `OrgId` can never be passed where a
//! `DossierId` is expected.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id as a UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The name of the event-store stream that holds this aggregate,
            /// e.g. `dossier-<uuid>`.
            pub fn stream(&self) -> String {
                format!(concat!($prefix, "-{}"), self.0)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

typed_id!(
    /// An organisation of the hierarchy (cell, district, province, central…).
    OrgId,
    "org"
);
typed_id!(
    /// A review cycle (e.g. the 2026 annual review).
    CycleId,
    "cycle"
);
typed_id!(
    /// A subject of review: an individual or a collective.
    SubjectId,
    "subject"
);
typed_id!(
    /// The dossier of one subject in one cycle.
    DossierId,
    "dossier"
);
typed_id!(
    /// One decision document of an authority (a batch of grades).
    DecisionId,
    "decision"
);
typed_id!(
    /// One event in an event store; also its `Nats-Msg-Id` on the wire.
    EventId,
    "event"
);
typed_id!(
    /// One command as sent by a caller; used for idempotency.
    CommandId,
    "command"
);
typed_id!(
    /// Groups every event caused, directly or not, by one request.
    CorrelationId,
    "correlation"
);
