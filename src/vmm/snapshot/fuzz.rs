//! Fuzz target: the snapshot reader. A state file is the VMM's own, but it holds what the guest
//! made of its devices and lies on disk where it can be damaged: `decode` must refuse, never
//! panic on, random files, random bodies behind a header and checksum that check out (so the
//! bytes reach the postcard decoder), and real states with bytes changed; what it accepts must
//! encode again to what decodes the same.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{decode, encode, FORMAT_VERSION, MAGIC};
use crate::vmm::devices::virtio::fuzzing::{self, Input};

/// `body` behind a header and checksum that check out.
fn wrap(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(body));
    out.extend_from_slice(body);
    out
}

/// Whether `bytes` decoded (and then round-tripped).
fn decodes_consistently(bytes: &[u8]) -> bool {
    let path = Path::new("fuzz/state");
    let Ok(state) = decode(path, bytes) else {
        return false;
    };
    {
        let again = encode(&state).expect("an accepted state encodes");
        let back = decode(path, &again).expect("a re-encoded state decodes");
        let twice = encode(&back).expect("a decoded state encodes");
        assert_eq!(twice, again, "a state changed through encode and decode");
    }
    true
}

#[test]
fn fuzz_snapshot_reader() {
    let valid = encode(&super::tests::sample_state()).expect("sample state");
    let valid_body = valid[52..].to_vec();
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            decodes_consistently(data);
            decodes_consistently(&wrap(data));
            // A real state with some bytes changed, cut or grown, its checksum made right.
            let mut input = Input::new(data);
            let mut body = valid_body.clone();
            for _ in 0..(input.u8() % 8) {
                let at = usize::from(input.u16()) % body.len().max(1);
                match input.u8() % 4 {
                    0 => body.truncate(at),
                    1 => body.insert(at.min(body.len()), input.u8()),
                    _ => {
                        if let Some(b) = body.get_mut(at) {
                            *b ^= input.u8() | 1;
                        }
                    }
                }
            }
            if decodes_consistently(&wrap(&body)) {
                reach.deep();
            }
        });
    reach.report("fuzz_snapshot_reader", "changed states accepted");
}
