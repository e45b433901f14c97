//! `keyhole publish` and `keyhole request`: the data owner's and requester's side.

use super::{PublishArgs, RequestArgs};
use anyhow::Context as _;
use keyhole::client::publish;
use std::process::ExitCode;

/// The event `keyhole publish` and `keyhole request` send.
fn event_spec(args: &PublishArgs, reply_to: Option<String>) -> publish::ReferenceEventSpec {
    publish::ReferenceEventSpec {
        id: args.id.clone().unwrap_or_else(publish::new_id),
        source: args.source.clone(),
        type_: args.type_.clone(),
        subject: args.subject.clone(),
        time: None,
        dataref: args.dataref.clone(),
        partition_key: args.key.clone(),
        correlation_id: args.correlation_id.clone(),
        reply_to,
    }
}

/// Publishes a request and prints its reply; exit 1 when none came in time.
pub fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let event = event_spec(&args.event, args.reply_to.then(|| args.reply_topic.clone()));
    let properties = args.event.kafka_properties()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let reply = runtime.block_on(publish::request(
        &args.event.bootstrap_servers,
        &properties,
        &args.event.topic,
        &event,
        &args.reply_topic,
        args.timeout,
    ));
    let reply = match reply {
        Ok(reply) => reply,
        Err(error @ publish::RequestError::TimedOut { .. }) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    let text = std::str::from_utf8(&reply.data).ok();
    if args.json {
        let mut value = serde_json::to_value(&reply)?;
        match text {
            Some(text) => value["data"] = text.into(),
            None => {
                value["data_base64"] = base64::engine::general_purpose::STANDARD.encode(&reply.data).into()
            }
        }
        println!("{value}");
    } else {
        eprintln!(
            "request {} published to {}; reply at {}[{}]@{}:",
            event.id, args.event.topic, reply.topic, reply.partition, reply.offset
        );
        for (name, value) in &reply.attributes {
            println!("{name}: {value}");
        }
        println!();
        match text {
            Some(text) => println!("{text}"),
            None => println!("(base64) {}", base64::engine::general_purpose::STANDARD.encode(&reply.data)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes one reference event.
pub fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let event = event_spec(&args, None);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let producer = publish::producer(&args.bootstrap_servers, &args.kafka_properties()?)?;
    let (partition, offset) = runtime.block_on(publish::publish(
        &producer,
        &args.topic,
        &event,
        std::time::Duration::from_secs(30),
    ))?;
    println!("published {} to {}[{partition}]@{offset}", event.id, args.topic);
    Ok(ExitCode::SUCCESS)
}
