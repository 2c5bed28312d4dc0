//! What the i8042 keeps in a snapshot: nothing (it only turns the reset command into a VM exit
//! and reads as idle). A struct all the same, so a later format version can add fields.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {}
