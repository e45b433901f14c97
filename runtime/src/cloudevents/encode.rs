//! Writing CloudEvents in binary content mode, for replies and for `keyhole publish`: every
//! attribute a `ce_<name>` header, the data's type in `content-type`, absent attributes left
//! out rather than sent empty.

/// A fresh event id: a random (version 4) UUID.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The current time as a CloudEvents `time` attribute (RFC 3339, UTC, milliseconds).
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The headers of a binary-mode event: `(ce_<name>, value)` for each attribute that has a
/// value, in the order given, then `content-type` when the data has a type.
pub fn binary_headers<'a>(
    attributes: &[(&str, Option<&'a str>)],
    content_type: Option<&'a str>,
) -> Vec<(String, &'a str)> {
    attributes
        .iter()
        .filter_map(|(name, value)| Some((format!("ce_{name}"), (*value)?)))
        .chain(content_type.map(|value| ("content-type".to_string(), value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_attributes_are_left_out_and_content_type_comes_last() {
        let headers = binary_headers(
            &[("specversion", Some("1.0")), ("subject", None), ("id", Some("e1"))],
            Some("text/plain"),
        );
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ce_specversion", "ce_id", "content-type"]);
        assert_eq!(uuid::Uuid::parse_str(&new_id()).map(|u| u.get_version_num()), Ok(4));
    }
}
