//! `keyhole deploy` and `keyhole rollback`: the third party's client of the admin API.

use super::{DeployArgs, HandlerArgs};
use anyhow::Context as _;
use keyhole::client::deploy::{Client, DeployError};
use std::process::ExitCode;

/// The admin API client with the tenant's token from the environment (never from an argument,
/// which other users of the machine can see).
fn admin_client(args: &HandlerArgs) -> anyhow::Result<Client> {
    let token = std::env::var("KEYHOLE_TOKEN")
        .context("set KEYHOLE_TOKEN to the token the operator issued to your tenant")?;
    Ok(Client::new(&args.admin_url, &token)?)
}

/// Uploads (and activates) a version; exit 1 when keyhole refuses it.
pub fn deploy(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    use DeployError;
    let wasm = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = admin_client(&args.target)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let t = &args.target;
    match runtime.block_on(client.deploy(&t.tenant, &t.handler, wasm, !args.no_activate)) {
        Ok(deployed) => {
            let v = &deployed.version;
            let new = if deployed.created { "uploaded" } else { "already uploaded" };
            println!("{new}: {} ({} bytes, {})", v.version, v.size_bytes, v.contract);
            if let Some(handler) = &deployed.handler {
                println!("active: {}/{} runs {} (state: {})", t.tenant, t.handler, v.version, handler.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ DeployError::Refused { .. }) => {
            eprintln!("refused: {error}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}

/// Activates the previous version; exit 1 when refused.
pub fn rollback(args: &HandlerArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match runtime.block_on(client.rollback(&args.tenant, &args.handler)) {
        Ok(handler) => {
            println!("active: {}/{} runs {}", args.tenant, args.handler, handler.active.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ DeployError::Refused { .. }) => {
            eprintln!("refused: {error}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}
