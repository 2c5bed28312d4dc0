//! The commitment quotas checked when a computer is made or resized: how many computers may exist,
//! and how many vCPUs, GB of RAM and GB of disk all of them together may be promised, relative to
//! what the host has (`quotas` in the config file). Messages name the config key to change.

use crate::config::Quotas;
use crate::store::Commitment;

/// What the host has, for commitment quotas.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub cpus: u32,
    pub mem_gb: u64,
}

impl HostFacts {
    pub fn detect() -> HostFacts {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0);
        HostFacts {
            cpus,
            mem_gb: mem_kb / (1024 * 1024),
        }
    }
}

/// Whether one more computer with `cpu` vCPUs and `ram_gb` of RAM fits next to what is already
/// committed (`now`); the error says which quota and how to change it.
pub fn admit(
    quotas: &Quotas,
    host: HostFacts,
    cpu: u32,
    ram_gb: u32,
    now: &Commitment,
) -> Result<(), String> {
    if now.computers + 1 > quotas.max_computers {
        return Err(format!(
            "Quota exceeded: max_computers is {} and {} computers exist (quotas.max_computers in the config file). Delete a computer first.",
            quotas.max_computers, now.computers
        ));
    }
    admit_commitment(quotas, host, cpu, ram_gb, now)
}

/// Whether a computer resized to `cpu` vCPUs and `ram_gb` of RAM fits next to what the other
/// computers hold (`others`): the commitment quotas of [`admit`], without the count of computers
/// (a resize makes none).
pub fn admit_resize(
    quotas: &Quotas,
    host: HostFacts,
    cpu: u32,
    ram_gb: u32,
    others: &Commitment,
) -> Result<(), String> {
    admit_commitment(quotas, host, cpu, ram_gb, others)
}

fn admit_commitment(
    quotas: &Quotas,
    host: HostFacts,
    cpu: u32,
    ram_gb: u32,
    now: &Commitment,
) -> Result<(), String> {
    let vcpu_limit = (quotas.vcpu_commit_ratio * f64::from(host.cpus)).floor() as u64;
    if now.vcpus + u64::from(cpu) > vcpu_limit {
        return Err(format!(
            "Quota exceeded: vCPU commitment would be {} of {vcpu_limit} allowed (quotas.vcpu_commit_ratio {} x {} host CPUs).",
            now.vcpus + u64::from(cpu),
            quotas.vcpu_commit_ratio,
            host.cpus
        ));
    }
    let ram_limit = (quotas.ram_commit_ratio * host.mem_gb as f64).floor() as u64;
    if now.ram_gb + u64::from(ram_gb) > ram_limit {
        return Err(format!(
            "Quota exceeded: RAM commitment would be {} GB of {ram_limit} GB allowed (quotas.ram_commit_ratio {} x {} GB host memory).",
            now.ram_gb + u64::from(ram_gb),
            quotas.ram_commit_ratio,
            host.mem_gb
        ));
    }
    Ok(())
}

/// Whether the filesystem holding `dir` keeps at least `quotas.min_free_disk_gb` free after
/// `needed_bytes` more are written; the error says how much is free and what to do.
pub fn check_free_space(
    quotas: &Quotas,
    dir: &std::path::Path,
    needed_bytes: u64,
) -> Result<(), String> {
    let stat = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s,
        // A directory that cannot be measured is not refused for it: the write itself will say.
        Err(_) => return Ok(()),
    };
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let reserve = u64::from(quotas.min_free_disk_gb) << 30;
    if free < needed_bytes.saturating_add(reserve) {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        return Err(format!(
            "Not enough disk space: the filesystem of {} has {:.1} GB free, and deskd keeps {} GB free \
             (quotas.min_free_disk_gb){}. Delete computers or snapshots, or give the data directory more room.",
            dir.display(),
            gib(free),
            quotas.min_free_disk_gb,
            if needed_bytes > 0 { format!(" after the {:.1} GB this needs", gib(needed_bytes)) } else { String::new() }
        ));
    }
    Ok(())
}

/// Whether one computer may have a disk of `disk_gb`.
pub fn check_disk(quotas: &Quotas, disk_gb: u32) -> Result<(), String> {
    let max = quotas.max_disk_gb_per_computer;
    if disk_gb > max {
        return Err(format!(
            "Quota exceeded: disk_size_gb {disk_gb} is over the {max} GB per computer allowed (quotas.max_disk_gb_per_computer)."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quota_is_named_when_it_is_the_one_exceeded() {
        let q = Quotas {
            max_computers: 2,
            vcpu_commit_ratio: 2.0,
            ram_commit_ratio: 1.0,
            max_disk_gb_per_computer: 100,
            min_free_disk_gb: 0,
        };
        let host = HostFacts {
            cpus: 4,
            mem_gb: 16,
        };
        let empty = Commitment {
            computers: 0,
            vcpus: 0,
            ram_gb: 0,
            disk_gb: 0,
        };
        assert!(admit(&q, host, 8, 16, &empty).is_ok());
        let full = Commitment {
            computers: 2,
            ..empty
        };
        assert!(admit(&q, host, 1, 1, &full)
            .unwrap_err()
            .contains("max_computers"));
        assert!(admit(&q, host, 9, 1, &empty)
            .unwrap_err()
            .contains("vcpu_commit_ratio"));
        assert!(admit(&q, host, 1, 17, &empty)
            .unwrap_err()
            .contains("ram_commit_ratio"));
        // A resize is not one more computer: only the commitments count.
        assert!(admit_resize(&q, host, 4, 8, &full).is_ok());
        assert!(admit_resize(&q, host, 9, 1, &full)
            .unwrap_err()
            .contains("vcpu_commit_ratio"));
        assert!(admit_resize(&q, host, 1, 17, &empty)
            .unwrap_err()
            .contains("ram_commit_ratio"));
        assert!(check_disk(&q, 100).is_ok());
        assert!(check_disk(&q, 101)
            .unwrap_err()
            .contains("max_disk_gb_per_computer"));
        let d = tempfile::tempdir().unwrap();
        assert!(check_free_space(&q, d.path(), 0).is_ok());
        let greedy = Quotas {
            min_free_disk_gb: u32::MAX,
            ..q
        };
        let err = check_free_space(&greedy, d.path(), 0).unwrap_err();
        assert!(err.contains("quotas.min_free_disk_gb"), "{err}");
    }
}
