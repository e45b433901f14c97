//! keyhole as its operators watch it: a real Prometheus (`KEYHOLE_TEST_PROMETHEUS`, Debian's
//! `prometheus`) scraping a real `keyhole run` every second, with the alert rules of
//! `deploy/prometheus/keyhole-rules.yaml`, while traffic goes through healthy, then through an
//! outage of the data owner, then into the dead-letter topic. Every query of the Grafana
//! dashboard (`deploy/grafana/keyhole.json`) is then asked of that Prometheus, as Grafana would
//! with every tenant and binding selected: none may come back empty. The alert on a paused
//! binding must fire during the outage.

use crate::common::{self, broker, cluster::free_port, collector::Collector, config::TestConfig};
use common::broker::{publish, reference};
use common::owner::{Answer, Owner};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The dashboard, as operators import it.
const DASHBOARD: &str = "deploy/grafana/keyhole.json";
/// The alert rules, as operators load them.
const RULES: &str = "deploy/prometheus/keyhole-rules.yaml";
/// How long each wait for Prometheus to see something may take.
const WITHIN: Duration = Duration::from_secs(20);

/// A Prometheus of the test's own, killed with the test (and when dropped).
struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    url: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `target`'s `/metrics` every second and evaluating
    /// `rules` (if given) every second; ready when this returns.
    async fn start(dir: &Path, target: &str, rules: Option<&Path>) -> Prometheus {
        let port = free_port();
        let rule_files =
            rules.map(|path| format!("rule_files:\n  - {}\n", path.display())).unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{rule_files}\
             scrape_configs:\n  - job_name: keyhole\n    metrics_path: /metrics\n    static_configs:\n      \
             - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = common::command_dying_with_the_test(common::prerequisite("KEYHOLE_TEST_PROMETHEUS"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut prometheus =
            Prometheus { child, url: format!("http://127.0.0.1:{port}"), dir: dir.into(), http };
        let started = Instant::now();
        loop {
            let ready = prometheus.http.get(format!("{}/-/ready", prometheus.url)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            assert!(
                started.elapsed() < WITHIN,
                "prometheus not ready within {WITHIN:?}:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `params`; the answer's `data`. Panics with Prometheus's error.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = url::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params).unwrap();
        let text = self.http.get(url).send().await.unwrap().text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert_eq!(answer["status"], "success", "{path} {params:?}: {answer}");
        answer["data"].clone()
    }

    /// The result of an instant query: its series (or a scalar's one value), each as JSON.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr)]).await;
        match &data["result"] {
            Value::Array(series) if data["resultType"] == "vector" || data["resultType"] == "matrix" => {
                series.clone()
            }
            // A scalar or a string is one value.
            other => vec![other.clone()],
        }
    }

    /// Waits until `expr` returns something.
    async fn until(&self, expr: &str, what: &str) {
        let started = Instant::now();
        while self.query(expr).await.is_empty() {
            assert!(started.elapsed() < WITHIN, "{what}: `{expr}` still empty after {WITHIN:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("{what} after {:?}", started.elapsed());
    }
}

/// The rules file with every `for:` hold cut to 0 s: the test checks what the rules say and
/// that they fire, within a minute, not how long each waits before it does.
fn rules_without_holds(rules: &Path, into: &Path) -> PathBuf {
    let text = std::fs::read_to_string(rules).unwrap();
    let held: String = text
        .lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            if line.trim_start().starts_with("for:") {
                format!("{indent}for: 0s\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let path = into.join("keyhole-rules.yaml");
    std::fs::write(&path, held).unwrap();
    path
}

/// A query of the dashboard as Grafana sends it with every tenant and binding selected
/// ("All", `.*`) and a one-minute rate window. Variables it does not know fail the test.
fn as_grafana_sends(expr: &str) -> String {
    let sent = expr
        .replace("${tenant}", ".*")
        .replace("$tenant", ".*")
        .replace("${binding}", ".*")
        .replace("$binding", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    assert!(!sent.contains('$'), "a variable this test does not substitute: {expr}");
    sent
}

/// Every query of the dashboard: (panel title, query). Each panel and query takes its
/// Prometheus from the dashboard's `datasource` variable, so that the file imports as it is.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        // A collapsed row holds its panels.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_string();
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for source in std::iter::once(panel).chain(targets) {
            assert_eq!(source["datasource"]["uid"], "${datasource}", "{title}: {source}");
        }
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            queries.push((title.clone(), expr.to_string()));
        }
    }
    queries
}

/// The dashboard's query variables as PromQL: `label_values(<selector>, <label>)` asks for the
/// label's values among the selector's series, which `count by (<label>) (<selector>)` lists.
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    let list = dashboard["templating"]["list"].as_array().unwrap();
    let variable =
        |name: &str| list.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name}"));
    assert_eq!(
        (variable("datasource")["type"].as_str(), variable("datasource")["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    for name in ["tenant", "binding"] {
        let filter = variable(name);
        assert_eq!(
            (filter["multi"].as_bool(), filter["includeAll"].as_bool()),
            (Some(true), Some(true)),
            "${name}"
        );
        assert_eq!(filter["allValue"], ".*", "${name}: All must select every value");
    }
    list.iter()
        .filter(|variable| variable["type"] == "query")
        .map(|variable| {
            let name = variable["name"].as_str().unwrap().to_string();
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("${name}: not label_values(...): {query}"));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            (name, as_grafana_sends(&format!("count by ({}) ({})", label.trim(), selector.trim())))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_has_data_and_the_outage_alert_fires_on_a_live_keyhole() {
    let started = Instant::now();
    let root = common::repo_root();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(DASHBOARD)).unwrap()).unwrap();
    let rules = root.join(RULES);
    assert!(rules.exists(), "{RULES} is missing: the alerts this test fires live there");

    let owner = Owner::start().await;
    owner.set("customers/ok", Answer::Release("application/json", br#"{"name":"Ada"}"#.to_vec()));
    // An answer keyhole cannot use: the event fails for good at stage resolve, dead lettered.
    owner.set("customers/bad", Answer::Status(400));
    let collector = Collector::start().await;
    let dir = std::env::temp_dir().join(broker::unique("keyhole-monitoring"));
    std::fs::create_dir_all(&dir).unwrap();
    let topic = broker::create_topic(2).await;
    let (api_port, monitoring_port) = (free_port(), free_port());
    let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, common::owner::TOKEN);
    let mut config = TestConfig::echo(&broker::unique("keyhole"), &topic, &owner.base_url(), &identity, "");
    config
        .set("admin.listen", format!("127.0.0.1:{api_port}"))
        .set("admin.monitoring_listen", format!("127.0.0.1:{monitoring_port}"))
        .set_toml("admin.operator_token", r#"{ value = "operator-token-of-the-monitoring-test" }"#)
        .set("admin.state_dir", dir.join("state").display().to_string())
        .set("audit.path", dir.join("audit.jsonl").display().to_string())
        .set("receipts.path", dir.join("receipts.jsonl").display().to_string())
        .set("telemetry.otlp_endpoint", collector.base_url())
        .set("telemetry.batch_delay_ms", 500)
        // The lag gauge every second rather than every 5.
        .kafka_property("statistics.interval.ms", "1000");
    let settings = config.settings();
    broker::create_named_topic(&settings.bindings[0].on_failure.dead_letter_topic, 1).await;
    config.write(&dir.join("keyhole.toml"));
    let keyhole = common::run_keyhole(&dir.join("keyhole.toml"));
    let keyhole_log = || std::fs::read_to_string(dir.join("keyhole.log")).unwrap_or_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let monitoring = format!("127.0.0.1:{monitoring_port}");
    while !http.get(format!("http://{monitoring}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(60), "keyhole not ready:\n{}", keyhole_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rules = rules_without_holds(&rules, &dir);
    let prometheus = Prometheus::start(&dir, &monitoring, Some(&rules)).await;

    // Healthy traffic all along: ten events a second over both partitions.
    let traffic = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let producer = broker::producer();
            for i in 0.. {
                let (id, key) = (format!("ok-{i}"), format!("key-{}", i % 8));
                publish(&producer, &topic, None, Some(&key), &reference(&id, "customers/ok"), None).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    prometheus
        .until(r#"sum(keyhole_events_finished_total{decision="delivered"}) > 10"#, "healthy events scraped")
        .await;

    // The owner goes down: the binding pauses, and the alert on it fires.
    let paused_rules: Vec<String> = {
        let groups = prometheus.api("rules", &[("type", "alert")]).await;
        let mut names = Vec::new();
        for group in groups["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if rule["query"].as_str().unwrap().contains("keyhole_binding_paused") {
                    names.push(rule["name"].as_str().unwrap().to_string());
                }
            }
        }
        names
    };
    assert!(!paused_rules.is_empty(), "no alert in {RULES} on keyhole_binding_paused");
    owner.go_down(503);
    prometheus.until(r#"keyhole_binding_paused{reason="owner_unavailable"} == 1"#, "the pause scraped").await;
    let firing_since = Instant::now();
    let fired = loop {
        let alerts = prometheus.api("alerts", &[]).await;
        let fired = alerts["alerts"].as_array().unwrap().iter().find(|alert| {
            alert["state"] == "firing"
                && paused_rules.iter().any(|name| alert["labels"]["alertname"] == name.as_str())
        });
        if let Some(alert) = fired {
            break alert.clone();
        }
        assert!(
            firing_since.elapsed() < WITHIN,
            "none of {paused_rules:?} fired while the owner was down: {alerts}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("firing during the outage: {fired}");
    owner.recover();
    prometheus.until("sum(keyhole_binding_paused) == 0", "the binding resumed").await;

    // Events that fail for good: the owner rejects the reference (400), or the envelope is
    // malformed (no id) and refused before any request.
    let producer = broker::producer();
    for i in 0..3 {
        let id = format!("bad-{i}");
        publish(&producer, &topic, None, Some(&id), &reference(&id, "customers/bad"), None).await;
        let mut malformed = reference(&format!("malformed-{i}"), "customers/ok");
        malformed.retain(|(name, _)| name != "ce_id");
        publish(&producer, &topic, None, Some(&id), &malformed, None).await;
    }
    prometheus.until("sum(keyhole_dead_letters_total) >= 6", "the dead letters scraped").await;
    prometheus
        .until(r#"sum(keyhole_trace_exports_total{outcome="ok"}) > 0"#, "the span exports scraped")
        .await;
    traffic.abort();

    // Every panel's query, as Grafana sends it, has data.
    let mut empty = Vec::new();
    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        let result = prometheus.query(&as_grafana_sends(expr)).await;
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    for (name, expr) in variable_queries(&dashboard) {
        if prometheus.query(&expr).await.is_empty() {
            empty.push(format!("${name}: {expr}"));
        }
    }
    // Every alert's expression, for the record (an alert that is quiet here is not wrong).
    let groups = prometheus.api("rules", &[("type", "alert")]).await;
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let (name, expr) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
            let result = prometheus.query(expr).await;
            eprintln!("alert {name} ({}): {} series now", rule["state"], result.len());
        }
    }
    assert!(
        empty.is_empty(),
        "{} of {} dashboard queries are empty on a live keyhole:\n  {}",
        empty.len(),
        queries.len(),
        empty.join("\n  ")
    );
    eprintln!("{} dashboard queries answered, in {:?} all told", queries.len(), started.elapsed());
    drop(prometheus);
    drop(keyhole);
    std::fs::remove_dir_all(&dir).ok();
}
