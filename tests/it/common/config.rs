//! keyhole configurations for the tests as TOML tables, changed key by key: a test says which
//! key it sets (`kafka.bootstrap_servers`, `handler.0.component`) instead of replacing text,
//! which silently does nothing when the text it looks for changes.

use keyhole::config::{Config, Settings};
use std::path::Path;

/// A keyhole configuration under construction.
#[derive(Clone, Debug)]
pub struct TestConfig(toml::Table);

impl TestConfig {
    /// Parses a configuration's text (panics on invalid TOML: the test's own mistake).
    pub fn from_toml(text: &str) -> TestConfig {
        TestConfig(toml::from_str(text).unwrap_or_else(|e| panic!("invalid TOML ({e}):\n{text}")))
    }

    /// [`super::kafka_and_owner_toml`]: `[kafka]`, `[shutdown]` and the data source `owner`.
    pub fn kafka_and_owner(group: &str, owner_base: &str, identity: &str) -> TestConfig {
        TestConfig::from_toml(&super::kafka_and_owner_toml(group, owner_base, identity))
    }

    /// [`super::echo_config`]: one `echo` handler (tenant `acme`) on `topic`.
    pub fn echo(
        group: &str,
        topic: &str,
        owner_base: &str,
        identity: &str,
        handler_extra: &str,
    ) -> TestConfig {
        TestConfig::from_toml(&super::echo_config(group, topic, owner_base, identity, handler_extra))
    }

    /// [`super::admin::admin_config`]: the admin API, no configured handler.
    pub fn admin(group: &str, owner_base: &str, state_dir: &Path) -> TestConfig {
        TestConfig::from_toml(&super::admin::admin_config(group, owner_base, state_dir))
    }

    /// Sets the key at `path`, dot-separated; a number indexes an array (`handler.0.component`).
    /// Missing tables on the way are created; a missing array element is an error of the test.
    pub fn set(&mut self, path: &str, value: impl Into<toml::Value>) -> &mut TestConfig {
        let (parents, key) = path.rsplit_once('.').map_or(("", path), |(p, k)| (p, k));
        self.table_at(parents).insert(key.to_string(), value.into());
        self
    }

    /// Sets the key at `path` to a value written as TOML (`{ value = "token" }`).
    pub fn set_toml(&mut self, path: &str, value: &str) -> &mut TestConfig {
        let TestConfig(mut parsed) = TestConfig::from_toml(&format!("value = {value}"));
        self.set(path, parsed.remove("value").unwrap())
    }

    /// Removes the key at `path`, which must be there.
    pub fn remove(&mut self, path: &str) -> &mut TestConfig {
        let (parents, key) = path.rsplit_once('.').map_or(("", path), |(p, k)| (p, k));
        assert!(self.table_at(parents).remove(key).is_some(), "no {path} in {self:#?}");
        self
    }

    /// Sets `key` of the (first) handler.
    pub fn handler(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut TestConfig {
        self.set(&format!("handler.0.{key}"), value)
    }

    /// The (first) handler runs the guest of that dist name instead of echo.
    pub fn guest(&mut self, name: &str) -> &mut TestConfig {
        self.handler("component", super::guest_path(name).display().to_string())
    }

    /// Sets a librdkafka property in `[kafka] properties` (its name has dots: no path here).
    pub fn kafka_property(&mut self, name: &str, value: &str) -> &mut TestConfig {
        self.table_at("kafka.properties").insert(name.to_string(), value.into());
        self
    }

    /// Merges TOML text in: its tables into the tables already here, key by key; its arrays of
    /// tables appended. For sections written as text (`[registry]` with its signing keys).
    pub fn merge(&mut self, text: &str) -> &mut TestConfig {
        let TestConfig(other) = TestConfig::from_toml(text);
        merge(&mut self.0, other);
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        toml::to_string(&self.0).unwrap()
    }

    /// Writes the TOML text to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).unwrap();
    }

    /// The validated settings (relative paths from the working directory); panics with every
    /// problem if invalid.
    pub fn settings(&self) -> Settings {
        let config: Config = toml::from_str(&self.text()).unwrap_or_else(|e| panic!("{e}\n{}", self.text()));
        config.validate(Path::new(".")).unwrap_or_else(|p| panic!("{p:#?}"))
    }

    fn table_at(&mut self, path: &str) -> &mut toml::Table {
        let mut table = &mut self.0;
        let mut segments = path.split('.').filter(|s| !s.is_empty()).peekable();
        while let Some(segment) = segments.next() {
            let value =
                table.entry(segment.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match value {
                toml::Value::Table(inner) => inner,
                toml::Value::Array(items) => {
                    let index = segments.next().and_then(|i| i.parse::<usize>().ok());
                    let item = index.and_then(|i| items.get_mut(i));
                    match item {
                        Some(toml::Value::Table(inner)) => inner,
                        _ => panic!("{path}: {segment} is an array: index it with a number in range"),
                    }
                }
                other => panic!("{path}: {segment} is {other}, not a table"),
            };
        }
        table
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (Some(toml::Value::Array(mine)), toml::Value::Array(theirs)) => mine.extend(theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[test]
fn keys_are_set_where_the_path_says_and_survive_the_round_trip() {
    let mut config = TestConfig::from_toml(
        "[kafka]\nbootstrap_servers = \"a:1\"\nproperties = { \"fetch.wait.max.ms\" = \"10\" }\n\
         [[handler]]\nname = \"echo\"\n[handler.retry]\ninitial_backoff_ms = 50\n",
    );
    config
        .set("kafka.bootstrap_servers", "b:2")
        .kafka_property("group.instance.id", "x")
        .handler("retry.max_attempts", 2)
        .set("audit.path", "audit.jsonl")
        .merge("[[handler]]\nname = \"second\"\n[audit]\nsink = \"file\"\n");
    let text = config.text();
    let back: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(back["kafka"]["bootstrap_servers"].as_str(), Some("b:2"), "{text}");
    assert_eq!(back["kafka"]["properties"]["fetch.wait.max.ms"].as_str(), Some("10"), "{text}");
    assert_eq!(back["kafka"]["properties"]["group.instance.id"].as_str(), Some("x"), "{text}");
    assert_eq!(back["handler"][0]["retry"]["max_attempts"].as_integer(), Some(2), "{text}");
    assert_eq!(back["handler"][0]["retry"]["initial_backoff_ms"].as_integer(), Some(50), "{text}");
    assert_eq!(back["handler"][1]["name"].as_str(), Some("second"), "{text}");
    assert_eq!(back["audit"]["path"].as_str(), Some("audit.jsonl"), "{text}");
    assert_eq!(back["audit"]["sink"].as_str(), Some("file"), "{text}");
}
