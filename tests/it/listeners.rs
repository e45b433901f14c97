//! The admin API's and the monitoring endpoints' listeners under a flood from clients without a
//! token: keyhole as a process, so that its own file descriptors are counted.

use crate::common::{self, broker, cluster::free_port, owner::Owner};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Half-open connections in the flood: several times the listener's cap and its backlog.
const FLOOD: usize = 3000;
/// The API listener's cap in this test.
const MAX_CONNECTIONS: usize = 100;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_half_open_connections_neither_blinds_the_probes_nor_exhausts_file_descriptors() {
    let owner = Owner::start().await;
    let dir = std::env::temp_dir().join(broker::unique("keyhole-flood"));
    std::fs::create_dir_all(&dir).unwrap();
    let (api_port, monitoring_port) = (free_port(), free_port());
    assert_ne!(api_port, monitoring_port);
    let path = dir.join("keyhole.toml");
    common::config::TestConfig::admin(&broker::unique("flood"), &owner.base_url(), &dir)
        .set("admin.listen", format!("127.0.0.1:{api_port}"))
        .set("admin.monitoring_listen", format!("127.0.0.1:{monitoring_port}"))
        .set("admin.max_connections", i64::try_from(MAX_CONNECTIONS).unwrap())
        .set("admin.header_read_timeout_ms", 3000)
        .write(&path);
    let keyhole = common::run_keyhole(&path);
    let (api, probes) = (format!("127.0.0.1:{api_port}"), format!("http://127.0.0.1:{monitoring_port}"));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let started = Instant::now();
    while !http.get(format!("{probes}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(60), "keyhole did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = open_files(keyhole.id());

    // Each connection sends half a request head and then nothing.
    let connects = (0..FLOOD).map(|_| {
        let api = api.clone();
        tokio::spawn(async move {
            let mut stream =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(api))
                    .await
                    .ok()?
                    .ok()?;
            stream.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: keyhole\r\nX-Half: ").await.ok()?;
            Some(stream)
        })
    });
    let mut flood = Vec::new();
    for connect in connects.collect::<Vec<_>>() {
        flood.extend(connect.await.unwrap());
    }
    // Beyond the cap and the kernel's backlog, connecting times out: the rest of the flood waits
    // outside keyhole.
    assert!(
        flood.len() > MAX_CONNECTIONS,
        "only {} connections were opened: the cap was not reached",
        flood.len()
    );

    // The probes answer at once, and keyhole holds no more connections than its cap.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let asked = Instant::now();
        let answer = http.get(format!("{probes}{path}")).send().await.unwrap();
        let took = asked.elapsed();
        assert_eq!(answer.status(), 200, "{path}");
        assert!(took < Duration::from_secs(1), "{path} took {took:?} during the flood");
        eprintln!("{path} answered in {took:?} during the flood");
    }
    let during = open_files(keyhole.id());
    eprintln!(
        "open files: {baseline} before, {during} during {} open connections of {FLOOD} tried",
        flood.len()
    );
    assert!(
        during <= baseline + MAX_CONNECTIONS + 16,
        "{during} open files during a flood of {} connections (baseline {baseline}, cap {MAX_CONNECTIONS})",
        flood.len()
    );

    // The half-open heads are closed after header_read_timeout_ms (3 s), a cap's worth at a time:
    // within 10 s at least the first cap's worth read the end of the stream.
    let reads: Vec<_> = flood
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut buffer = [0u8; 512];
                let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await;
                (read.is_ok(), stream)
            })
        })
        .collect();
    let mut flood = Vec::new();
    let mut closed = 0;
    for read in reads {
        let (was_closed, stream) = read.await.unwrap();
        closed += usize::from(was_closed);
        flood.push(stream);
    }
    assert!(closed >= MAX_CONNECTIONS, "only {closed} half-open connections were closed within 10 s");

    // Once the flood stops, the API answers again.
    drop(flood);
    let asked = Instant::now();
    loop {
        let answer =
            http.get(format!("http://{api}/v1/tenants")).bearer_auth(common::admin::OPERATOR).send().await;
        if answer.is_ok_and(|a| a.status() == 200) {
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "the API did not answer after the flood");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(keyhole);
    let _ = std::fs::remove_dir_all(&dir);
}
