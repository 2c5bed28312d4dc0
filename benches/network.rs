//! Guest networking's host side: set-up and teardown per computer (namespace, TAP, veth,
//! addresses, routes, nftables table, resolver sockets), p50/p99 over 50 computers, one after
//! another and 8 at a time (no host-wide lock: concurrent set-ups should not queue).
//!
//! Needs root (network namespaces, TAP, nftables); skips loudly otherwise. Touches only
//! namespaces `deskd-<bench id>`, links `dkv<...>` and the table `deskd_host`, all removed at the
//! end; IPv4 forwarding is restored. `cargo bench --bench network` (DESKD_BENCH_COMPUTERS=50).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd::network::{EgressPolicy, Network, NetworkConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "| {name:<32} | {:>4} | {:>9.2} | {:>9.2} | {:>9.2} |",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn id(run: u32, i: u32) -> String {
    format!("be{run:06x}-0000-4000-8000-{i:012x}")
}

fn main() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED network bench: needs root and /dev/net/tun");
        return;
    }
    let n: u32 = std::env::var("DESKD_BENCH_COMPUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = NetworkConfig {
        enabled: deskd::network::Switch::On,
        // Never asked: the bench sends no DNS query.
        upstream_dns: vec!["127.0.0.1:53".parse().unwrap()],
        ..NetworkConfig::default()
    };
    let net: Arc<Network> = rt.block_on(Network::start(config)).expect("network start");
    let policy = EgressPolicy::default();
    println!(
        "| {:<32} | {:>4} | {:>9} | {:>9} | {:>9} |",
        "operation", "n", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<34}|{:-<6}|{:-<11}|{:-<11}|{:-<11}|",
        "", "", "", "", ""
    );

    // One after another.
    let mut setups = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        handles.push(rt.block_on(net.setup(&id(1, i), &policy)).expect("setup"));
        setups.push(t.elapsed());
    }
    let mut teardowns = Vec::new();
    drop(handles);
    for i in 0..n {
        let t = Instant::now();
        rt.block_on(net.teardown(&id(1, i))).expect("teardown");
        teardowns.push(t.elapsed());
    }
    row("set-up, sequential", setups);
    row("teardown, sequential", teardowns);

    // 8 at a time.
    let wall = Instant::now();
    let setups: Vec<Duration> = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (net, sem, policy) = (net.clone(), sem.clone(), policy.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                let t = Instant::now();
                let h = net.setup(&id(2, i), &policy).await.expect("setup");
                drop(h);
                t.elapsed()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let setup_wall = wall.elapsed();
    let wall = Instant::now();
    let teardowns: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..n {
            let net = net.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                net.teardown(&id(2, i)).await.expect("teardown");
                t.elapsed()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let teardown_wall = wall.elapsed();
    row("set-up, 8 in flight", setups);
    row("teardown, all in flight", teardowns);
    println!(
        "\n{n} set-ups 8 at a time took {:.0} ms in all ({:.1} ms per computer); {n} teardowns {:.0} ms.",
        setup_wall.as_secs_f64() * 1e3,
        setup_wall.as_secs_f64() * 1e3 / f64::from(n),
        teardown_wall.as_secs_f64() * 1e3
    );
    rt.block_on(net.shutdown()).expect("shutdown");
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding);
}
