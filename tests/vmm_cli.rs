//! `deskd vmm` start-up errors: each is one clear line on stderr and exit status 1, before any
//! guest runs. No KVM needed except where noted.

use std::path::PathBuf;
use std::process::{Command, Output};

fn deskd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deskd"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deskd-vmm-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn vmm(args: &[&str]) -> Output {
    deskd().arg("vmm").args(args).output().unwrap()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("deskd vmm:"))
        .collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].contains(needle), "want {needle:?} in {stderr}");
}

#[test]
fn missing_kernel() {
    assert_one_line_error(&vmm(&[]), "no kernel given");
    assert_one_line_error(
        &vmm(&["--kernel", "/nonexistent/vmlinuz"]),
        "cannot open the kernel /nonexistent/vmlinuz",
    );
}

#[test]
fn unreadable_disk() {
    let dir = scratch("disk");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"x").unwrap();
    let out = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        "/nonexistent/disk.img",
    ]);
    assert_one_line_error(&out, "cannot open the disk /nonexistent/disk.img");
}

#[test]
fn too_little_host_memory() {
    let dir = scratch("mem");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"x").unwrap();
    // 1 TiB: the largest accepted size, more than any test machine has available.
    let out = vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", "1048576"]);
    assert_one_line_error(&out, "MiB available");
}

#[test]
fn kvm_without_hardware_virtualization() {
    if deskd::vmm::host::cpu_has_hardware_virtualization() {
        eprintln!("SKIPPED kvm_without_hardware_virtualization: this CPU has vmx/svm");
        return;
    }
    let dir = scratch("hw");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"x").unwrap();
    let out = vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", "128"]);
    assert_one_line_error(&out, "no hardware virtualization");
}

#[test]
fn unusable_snapshots_are_refused_before_any_guest_runs() {
    let dir = scratch("restore");
    let missing = dir.join("missing");
    assert_one_line_error(
        &vmm(&["--restore", missing.to_str().unwrap()]),
        "cannot read",
    );
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("state"), b"#!/bin/sh\n").unwrap();
    assert_one_line_error(
        &vmm(&["--restore", snap.to_str().unwrap()]),
        "not a deskd snapshot",
    );
    let mut future = b"DESKDSNP".to_vec();
    future.extend_from_slice(&99u32.to_le_bytes());
    future.extend_from_slice(&[0u8; 40]);
    std::fs::write(snap.join("state"), &future).unwrap();
    assert_one_line_error(
        &vmm(&["--restore", snap.to_str().unwrap()]),
        "format version 99",
    );
    future[8..12].copy_from_slice(&deskd::vmm::snapshot::FORMAT_VERSION.to_le_bytes());
    std::fs::write(snap.join("state"), &future[..30]).unwrap();
    assert_one_line_error(&vmm(&["--restore", snap.to_str().unwrap()]), "truncated");
    assert_one_line_error(
        &vmm(&["--restore-paused"]),
        "--restore-paused needs --restore",
    );
}
