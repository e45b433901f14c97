//! A handler that needs less than it is given, as data protection asks: from a customer profile
//! it derives an age band and a country, and replies with only those.
//!
//! Input (`application/json`): `{"birthdate": "YYYY-MM-DD", "country": "DE", ...}`; any other
//! fields (name, e-mail, ...) are ignored and never leave the handler. The age is computed at the
//! event's `time` (RFC 3339), so a redelivery gives the same answer.
//! Reply: `{"age_band": "30-39", "country": "DE"}`.

use keyhole_guest::{Event, Guest, HandlerError, Level, Reply, log};
use serde::Deserialize;

#[derive(Deserialize)]
struct Profile {
    birthdate: String,
    country: String,
}

struct AgeBand;

impl Guest for AgeBand {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let profile: Profile = serde_json::from_slice(&event.data)
            .map_err(|e| HandlerError::Permanent(format!("profile is not the expected JSON: {e}")))?;
        let at = event
            .time
            .as_deref()
            .ok_or_else(|| HandlerError::Permanent("the event has no `time` attribute".into()))?;
        let age = years_between(&profile.birthdate, at)
            .ok_or_else(|| HandlerError::Permanent("birthdate or time is not a date".into()))?;
        let band = match age {
            ..18 => "under-18".to_string(),
            18..=29 => "18-29".to_string(),
            70.. => "70+".to_string(),
            n => format!("{0}0-{0}9", n / 10),
        };
        log(Level::Debug, &format!("Derived an age band for event {}.", event.id));
        let body = serde_json::json!({ "age_band": band, "country": profile.country });
        Ok(Some(Reply {
            type_: "keyhole.example.age-band".to_string(),
            datacontenttype: "application/json".to_string(),
            data: body.to_string().into_bytes(),
        }))
    }
}

/// Whole years from `birthdate` (`YYYY-MM-DD`) to `at` (an RFC 3339 timestamp).
fn years_between(birthdate: &str, at: &str) -> Option<i32> {
    let (by, bm, bd) = ymd(birthdate)?;
    let (y, m, d) = ymd(at.get(..10)?)?;
    let before_birthday = (m, d) < (bm, bd);
    Some(y - by - i32::from(before_birthday))
}

fn ymd(s: &str) -> Option<(i32, u32, u32)> {
    let mut parts = s.splitn(3, '-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

keyhole_guest::export_handler!(AgeBand);
