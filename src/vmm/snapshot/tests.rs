//! The state file reader against good, truncated, corrupted and foreign files; the host check;
//! the whole-or-absent directory.

use proptest::prelude::*;

use super::*;
use crate::vmm::devices::virtio::persist::{DeviceState, SavedQueue};
use crate::vmm::devices::virtio::rng::persist::RngState;

fn sample_config() -> VmConfig {
    VmConfig {
        kernel: "/boot/vmlinuz".into(),
        initrd: Some("/boot/initrd".into()),
        cmdline: "console=ttyS0".into(),
        disks: Vec::new(),
        vcpus: 2,
        memory_mib: 256,
        vsock: None,
        net: Vec::new(),
        rng: true,
        console_log: Some("/tmp/console.log".into()),
        console_stdout: false,
        control_socket: None,
        shutdown_timeout_secs: 30,
        host_decompress: true,
        exit_status_file: None,
        log_file: None,
        pid_file: None,
        confine: None,
    }
}

fn sample_vcpu(rip: u64) -> VcpuState {
    let regs = kvm_bindings::kvm_regs {
        rip,
        ..Default::default()
    };
    VcpuState {
        cpuid: vec![kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            eax: 0x800f12,
            ..Default::default()
        }],
        msrs: vec![kvm_bindings::kvm_msr_entry {
            index: 0x10,
            data: 123_456_789,
            ..Default::default()
        }],
        regs,
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debug_regs: Default::default(),
        lapic: Default::default(),
        mp_state: Default::default(),
        vcpu_events: Default::default(),
        tsc_khz: Some(2_000_000),
    }
}

pub(crate) fn sample_state() -> SnapshotState {
    let queue = SavedQueue {
        max_size: 256,
        size: 256,
        ready: true,
        event_idx_enabled: true,
        next_avail: 17,
        next_used: 17,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
    };
    SnapshotState {
        host: HostFacts {
            kvm_api_version: 12,
            cpuid: vec![CpuidLeaf {
                function: 7,
                index: 0,
                flags: 1,
                eax: 0,
                ebx: 0x219c_91a9,
                ecx: 0,
                edx: 0,
            }],
            capabilities: vec![
                ("KVM_CAP_IRQCHIP".into(), true),
                ("KVM_CAP_XSAVE2".into(), false),
            ],
        },
        config: sample_config(),
        memory: vec![MemoryRegion {
            guest_addr: 0,
            size: 256 << 20,
            file_offset: 0,
        }],
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: kvm_bindings::kvm_clock_data {
                clock: 987_654_321,
                ..Default::default()
            },
        },
        vcpus: vec![
            sample_vcpu(0xffff_ffff_8100_0000),
            sample_vcpu(0xffff_ffff_8100_1000),
        ],
        legacy: LegacyDevicesState {
            serial: SerialSnapshot::from(&vm_superio::serial::SerialState::default()),
            i8042: I8042State {},
            acpi_pm: AcpiPmState {},
        },
        virtio: vec![TransportState {
            device_type: 4,
            status: 0xf,
            device_features_sel: 1,
            driver_features_sel: 1,
            driver_features: 1 << 32,
            queue_sel: 0,
            config_generation: 0,
            activated: true,
            interrupt_status: 1,
            needs_reset: false,
            bad_size: vec![false],
            queues: vec![queue],
            device: DeviceState::Rng(RngState {}),
        }],
        taken_unix_ms: 1_700_000_000_000,
    }
}

fn path() -> &'static Path {
    Path::new("/snap/state")
}

#[test]
fn a_state_file_round_trips() {
    let state = sample_state();
    let bytes = encode(&state).unwrap();
    assert_eq!(&bytes[..8], b"DESKDSNP");
    let back = decode(path(), &bytes).unwrap();
    assert_eq!(back.config, state.config);
    assert_eq!(back.host, state.host);
    assert_eq!(back.memory, state.memory);
    assert_eq!(back.virtio, state.virtio);
    assert_eq!(back.legacy, state.legacy);
    assert_eq!(back.vcpus.len(), 2);
    assert_eq!(back.vcpus[1].regs.rip, 0xffff_ffff_8100_1000);
    assert_eq!(back.vcpus[0].msrs[0].data, 123_456_789);
    assert_eq!(back.vm.clock.clock, 987_654_321);
    assert_eq!(back.taken_unix_ms, state.taken_unix_ms);
}

#[test]
fn every_truncation_is_refused() {
    let bytes = encode(&sample_state()).unwrap();
    for len in 0..bytes.len() {
        let err = decode(path(), &bytes[..len]).err();
        assert!(
            err.is_some(),
            "a file cut at {len} of {} bytes was accepted",
            bytes.len()
        );
    }
    assert!(matches!(
        decode(path(), &bytes[..bytes.len() - 1]),
        Err(SnapshotError::Truncated { .. })
    ));
}

#[test]
fn foreign_files_and_other_versions_say_so() {
    let mut bytes = encode(&sample_state()).unwrap();
    let err = decode(path(), b"#!/bin/sh\necho hello\n").unwrap_err();
    assert!(matches!(err, SnapshotError::NotASnapshot { .. }), "{err}");
    let other = FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&other.to_le_bytes());
    let err = decode(path(), &bytes).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Version { found, .. } if found == other),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("version {other}")),
        "{err}"
    );
    // Appended garbage is corruption, not a longer body.
    let mut longer = encode(&sample_state()).unwrap();
    longer.extend_from_slice(b"junk");
    assert!(matches!(
        decode(path(), &longer),
        Err(SnapshotError::Corrupt { .. })
    ));
}

#[test]
fn a_body_that_checks_out_but_does_not_decode_is_refused() {
    // A valid header and checksum around bytes that are not a SnapshotState.
    let body = vec![0xffu8; 40];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(&body));
    bytes.extend_from_slice(&body);
    let err = decode(path(), &bytes).unwrap_err();
    assert!(matches!(err, SnapshotError::Decode { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_flipped_byte_is_refused(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = encode(&sample_state()).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(decode(path(), &bytes).is_err(), "byte {} flipped by {:#x} was accepted", i, flip);
    }

    #[test]
    fn any_cut_and_flip_is_refused(cut in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let bytes = encode(&sample_state()).unwrap();
        let mut cut_bytes = bytes[..cut.index(bytes.len())].to_vec();
        if !cut_bytes.is_empty() {
            let i = pos.index(cut_bytes.len());
            cut_bytes[i] ^= flip;
        }
        prop_assert!(decode(path(), &cut_bytes).is_err());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 12 {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        }
        prop_assert!(decode(path(), &bytes).is_err());
    }
}

#[test]
fn the_host_cpuid_ignores_which_cpu_answered_but_not_features() {
    let leaf =
        |function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32| kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
    let on_cpu = |apic: u32| {
        vec![
            leaf(1, 0x800f12, apic << 24 | 0x0800, 0x7ed8_320b, 0x178b_fbff),
            leaf(0xb, 1, 1, 0x100, apic),
            leaf(0x8000_001e, apic, 0x100 | apic, apic, 0),
        ]
    };
    assert_eq!(host_cpuid(&on_cpu(0)), host_cpuid(&on_cpu(1)));
    let mut fewer_features = on_cpu(0);
    fewer_features[0].ecx &= !(1 << 28); // no AVX
    assert_ne!(host_cpuid(&on_cpu(0)), host_cpuid(&fewer_features));
}

#[test]
fn another_host_is_refused_with_the_reason() {
    let here = sample_state().host;
    here.check(&here.clone()).unwrap();
    let mut other = here.clone();
    other.cpuid[0].ebx ^= 1;
    let err = here.check(&other).unwrap_err();
    assert!(err.to_string().contains("CPUID"), "{err}");
    assert!(
        err.to_string().contains("leaf 0x7/0x0 = 00000000 219c91a8"),
        "{err}"
    );
    let mut other = here.clone();
    other.capabilities[1].1 = true;
    let err = here.check(&other).unwrap_err();
    assert!(err.to_string().contains("KVM_CAP_XSAVE2 present"), "{err}");
    let mut other = here.clone();
    other.kvm_api_version = 11;
    assert!(here
        .check(&other)
        .unwrap_err()
        .to_string()
        .contains("API version 11"));
}

#[test]
fn a_snapshot_directory_is_whole_or_absent() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("snap");
    // Abandoned half-way: nothing at DIR, no temporary left.
    let pending = PendingSnapshot::create(&dir).unwrap();
    std::fs::write(pending.memory_path(), b"half").unwrap();
    drop(pending);
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    // Finished: DIR has both files and reads back.
    let pending = PendingSnapshot::create(&dir).unwrap();
    std::fs::write(pending.memory_path(), b"first").unwrap();
    pending.finish(&sample_state()).unwrap();
    assert_eq!(std::fs::read(dir.join(MEMORY_FILE)).unwrap(), b"first");
    assert_eq!(read_state(&dir).unwrap().vcpus.len(), 2);
    // A second snapshot to the same DIR replaces the first whole.
    let pending = PendingSnapshot::create(&dir).unwrap();
    std::fs::write(pending.memory_path(), b"second").unwrap();
    pending.finish(&sample_state()).unwrap();
    assert_eq!(std::fs::read(dir.join(MEMORY_FILE)).unwrap(), b"second");
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("snap")]);
    // A missing state file is an I/O error naming the file.
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    let err = read_state(&dir).unwrap_err();
    assert!(err.to_string().contains("snap/state"), "{err}");
}
