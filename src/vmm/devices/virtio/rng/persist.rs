//! What a virtio-rng device keeps in a snapshot: nothing beyond its queue (saved by the
//! transport). Every request is filled from getrandom(2) when it is served, so a restored copy
//! hands out fresh host entropy, never bytes drawn before the snapshot.

use serde::{Deserialize, Serialize};

/// The (empty) device state; a struct so that fields can be added in a later format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {}
