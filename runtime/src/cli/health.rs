//! `keyhole health`: asks a running keyhole's `/readyz` (or `/healthz`) and exits 0 when it
//! answers 2xx. The container image's HEALTHCHECK: the slim image has no curl.

use anyhow::Context as _;
use std::process::ExitCode;
use std::time::Duration;

/// `url`, or the `/readyz` of the monitoring listener that `config` configures
/// (`admin.monitoring_listen`, on loopback when it listens on every address): a health check
/// that follows the configuration's port.
pub fn target(url: Option<String>, config: &std::path::Path) -> anyhow::Result<String> {
    if let Some(url) = url {
        return Ok(url);
    }
    let text =
        std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    // Only the address is needed: parsed without resolving secrets.
    let parsed: keyhole::config::Config =
        toml::from_str(&text).with_context(|| format!("{} is not valid", config.display()))?;
    let admin =
        parsed.admin.with_context(|| format!("{} has no [admin] section to ask", config.display()))?;
    let mut address: std::net::SocketAddr = admin
        .monitoring_listen
        .parse()
        .with_context(|| format!("admin.monitoring_listen {:?} is not ip:port", admin.monitoring_listen))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{address}/readyz"))
}

/// GETs `url` within `timeout`; exit 0 on a 2xx answer, 1 otherwise (and says why on stderr).
pub fn health(url: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, _)) if status.is_success() => Ok(ExitCode::SUCCESS),
        Ok((status, body)) => {
            eprintln!("unhealthy: {url} answered {status}: {}", body.trim());
            Ok(ExitCode::from(1))
        }
        Err(error) => {
            eprintln!("unhealthy: {url}: {error}");
            Ok(ExitCode::from(1))
        }
    }
}
