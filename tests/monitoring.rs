//! The monitoring kit in `deploy/`: the Prometheus config and alert rules
//! (checked and unit-tested by promtool), the Grafana dashboard (well formed,
//! every metric and label it names exists, every query parses), and the
//! whole of it against a live three-node cluster scraped by a real
//! Prometheus: every dashboard query answers, the panels that must show data
//! do, every alert rule evaluates cleanly and none fires on a healthy
//! cluster, and a killed node raises OutpostDown.
//!
//! promtool and prometheus come from OUTPOST_PROMTOOL / OUTPOST_PROMETHEUS,
//! else PATH (Debian: `apt-get install prometheus`); without them a test
//! prints a SKIPPED line and passes, unless OUTPOST_REQUIRE_TOOLS=1.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, get, post, text_arg, tool, Server};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Tools and files

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs promtool; panics with its output unless it succeeds.
fn promtool(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

// ---------------------------------------------------------------------------
// The dashboard

struct Panel {
    id: u64,
    title: String,
    kind: String,
    /// x, y, w, h
    grid: (i64, i64, i64, i64),
    /// (refId, expr as written, with Grafana's variables)
    targets: Vec<(String, String)>,
    json: Value,
}

fn dashboard() -> Value {
    let path = deploy().join("grafana/outpost.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, those nested in collapsed rows too.
fn panels(dash: &Value) -> Vec<Panel> {
    fn walk(list: &Value, out: &mut Vec<Panel>) {
        for p in list.as_array().expect("panels is a list") {
            let title = p["title"].as_str().unwrap_or("").to_string();
            let g = &p["gridPos"];
            let num = |k: &str| {
                g[k].as_i64()
                    .unwrap_or_else(|| panic!("panel {title:?}: gridPos.{k} missing"))
            };
            let targets = p["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| {
                            (
                                t["refId"].as_str().unwrap_or("").to_string(),
                                t["expr"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Panel {
                id: p["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("panel {title:?} has no numeric id")),
                kind: p["type"].as_str().unwrap_or("").to_string(),
                grid: (num("x"), num("y"), num("w"), num("h")),
                title,
                targets,
                json: p.clone(),
            });
            if p["panels"].is_array() {
                walk(&p["panels"], out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// A Grafana expression as Prometheus sees it, the variables filled in as
/// Grafana would for "All" nodes.
fn promql(expr: &str) -> String {
    let q = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${instance}", ".*")
        .replace("$instance", ".*");
    assert!(
        !q.contains('$'),
        "an unknown Grafana variable is left in {expr}"
    );
    q
}

/// The dashboard's queries: (panel title, refId, expr).
fn dashboard_queries(dash: &Value) -> Vec<(String, String, String)> {
    panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p.title.clone();
            p.targets
                .into_iter()
                .map(move |(r, e)| (title.clone(), r, e))
        })
        .collect()
}

/// The alert rules' `expr:` values from alerts.yml (inline or block).
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let indent = line.len() - trimmed.len();
                let mut expr = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push('\n');
                    i += 1;
                }
                out.push((alert.clone(), expr));
            } else {
                out.push((alert.clone(), rest.to_string()));
            }
        }
        i += 1;
    }
    out
}

fn alert_names(yaml: &str) -> BTreeSet<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `outpost_*` and `process_*` names a text mentions (metric names in
/// queries, and in the alerts' prose).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["outpost_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].chars().next_back().is_some_and(ident_char) {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.len() > prefix.len() {
                names.insert(name);
            }
        }
    }
    names
}

/// What a query selects: the label names of every metric selector, by
/// metric, and the labels of its grouping clauses (`by`, `on`, ...).
struct Selected {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// A small PromQL scanner: enough to find selectors and grouping labels in
/// the queries of this kit (promtool checks the syntax).
fn scan(expr: &str) -> Selected {
    let chars: Vec<char> = expr.chars().collect();
    let mut selectors = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') || (i > 0 && ident_char(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident_char(chars[i]) {
            i += 1;
        }
        let ident: String = chars[start..i].iter().collect();
        let j = skip_ws(i);
        let list_follows = j < chars.len() && (chars[j] == '{' || chars[j] == '(');
        if !list_follows {
            if ident.starts_with("outpost_") || ident.starts_with("process_") {
                selectors.push((ident, Vec::new()));
            }
            continue;
        }
        let grouping_kw = matches!(
            ident.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        );
        if chars[j] == '(' && !grouping_kw {
            // A function call: its arguments are scanned as they come.
            i = j + 1;
            continue;
        }
        // A label list: `{a="x", b=~"y"}` or `(a, b)`.
        let close = if chars[j] == '{' { '}' } else { ')' };
        let mut k = j + 1;
        let mut part = String::new();
        let mut parts = Vec::new();
        while k < chars.len() && chars[k] != close {
            let ch = chars[k];
            if ch == '"' || ch == '\'' {
                part.push(ch);
                k += 1;
                while k < chars.len() && chars[k] != ch {
                    if chars[k] == '\\' {
                        part.push(chars[k]);
                        k += 1;
                    }
                    part.push(chars[k]);
                    k += 1;
                }
                part.push(ch);
            } else if ch == ',' {
                parts.push(std::mem::take(&mut part));
            } else {
                part.push(ch);
            }
            k += 1;
        }
        parts.push(part);
        let labels: Vec<String> = parts
            .iter()
            .map(|p| {
                p.split(['=', '!'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches('~')
                    .to_string()
            })
            .filter(|l| !l.is_empty())
            .collect();
        if close == '}' {
            selectors.push((ident, labels));
        } else {
            grouping.extend(labels);
        }
        i = k + 1;
    }
    Selected {
        selectors,
        grouping,
    }
}

/// The metric families of a Prometheus text exposition (`# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The family a series name belongs to (a histogram's `_bucket`, `_sum`,
/// `_count`), given the families known.
fn family_of<'a>(name: &'a str, known: &dyn Fn(&str) -> bool) -> &'a str {
    if known(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if known(base) {
                return base;
            }
        }
    }
    name
}

// ---------------------------------------------------------------------------
// A real Prometheus

/// A `prometheus` process on a loopback port, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Waits up to 15 s for an alert `matches` to be pending or firing;
    /// returns how long it took.
    fn wait_for_alert(&self, matches: impl Fn(&Value) -> bool, what: &str) -> Duration {
        let since = Instant::now();
        loop {
            let alerts = self.api("alerts", &[]);
            let found = alerts["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| matches(a) && (a["state"] == "pending" || a["state"] == "firing"));
            if let Some(alert) = found {
                // Its runbook rendered from live labels and values.
                for key in ["summary", "description"] {
                    let text = alert["annotations"][key].as_str().unwrap_or("");
                    assert!(
                        !text.is_empty()
                            && !text.contains("error expanding")
                            && !text.contains("<no value>"),
                        "{what}: annotation {key} did not render: {alert}"
                    );
                }
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "{what}: not pending within 15 s; active alerts: {alerts}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET /api/v1/<path> and its `data`; panics unless status is success.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut req =
            ureq::get(&format!("{}/api/v1/{path}", self.url)).timeout(Duration::from_secs(10));
        for (k, v) in query {
            req = req.query(k, v);
        }
        let text = match req.call() {
            Ok(r) => r.into_string().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                format!("HTTP {code}: {}", r.into_string().unwrap_or_default())
            }
            Err(e) => panic!("GET {path}: {e}\n{}", self.log()),
        };
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path} {query:?}: not JSON ({e}): {text}"));
        assert_eq!(json["status"], "success", "GET {path} {query:?}: {json}");
        json["data"].clone()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// deploy/prometheus/prometheus.yml for a test: the same file with the
/// fleet's targets replaced by `targets`, every interval 1 s, and the
/// self-scrape pointed at `self_addr`.
fn derived_config(original: &str, targets: &[String], self_addr: &str) -> String {
    let mut replaced = BTreeMap::<&str, usize>::new();
    let mut out = String::new();
    for line in original.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let line = if let Some(key) = [
            "scrape_interval:",
            "evaluation_interval:",
            "scrape_timeout:",
        ]
        .into_iter()
        .find(|k| trimmed.starts_with(k))
        {
            *replaced.entry(key).or_default() += 1;
            format!("{indent}{key} 1s")
        } else if line.contains("\"edge1:9090\"") && !trimmed.starts_with('#') {
            *replaced.entry("targets").or_default() += 1;
            let (open, close) = (line.find('[').unwrap(), line.rfind(']').unwrap());
            let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            format!("{}{}{}", &line[..=open], list.join(", "), &line[close..])
        } else if line.contains("\"localhost:9090\"") && !trimmed.starts_with('#') {
            *replaced.entry("self").or_default() += 1;
            line.replace("localhost:9090", self_addr)
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    for key in [
        "scrape_interval:",
        "evaluation_interval:",
        "targets",
        "self",
    ] {
        assert_eq!(
            replaced.get(key),
            Some(&1),
            "prometheus.yml: expected exactly one {key} line to replace:\n{original}"
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn alert_rules_and_config_are_valid() {
    let Some(promtool_bin) = tool(
        "alert_rules_and_config_are_valid",
        "OUTPOST_PROMTOOL",
        "promtool",
    ) else {
        return;
    };
    let dir = deploy().join("prometheus");
    let config = dir.join("prometheus.yml");
    let rules = dir.join("alerts.yml");
    let tests = dir.join("alerts.test.yml");
    let out = promtool(
        &promtool_bin,
        &["check", "config", config.to_str().unwrap()],
    );
    assert!(out.contains("1 rule files found"), "{out}");
    let out = promtool(&promtool_bin, &["check", "rules", rules.to_str().unwrap()]);
    let names = alert_names(&read(&rules));
    assert!(
        out.contains(&format!("{} rules found", alert_exprs(&read(&rules)).len())),
        "{out}"
    );
    promtool(&promtool_bin, &["test", "rules", tests.to_str().unwrap()]);

    // Every alert has a test where it fires and one where it must not.
    let test_text = read(&tests);
    for name in &names {
        let evals: Vec<&str> = test_text
            .split("alertname: ")
            .skip(1)
            .filter(|s| s.starts_with(&format!("{name}\n")))
            .collect();
        assert!(!evals.is_empty(), "alerts.test.yml never evaluates {name}");
        let fires = evals.iter().any(|s| {
            s.split("alertname: ")
                .next()
                .unwrap()
                .contains("exp_labels")
        });
        assert!(fires, "alerts.test.yml has no case where {name} fires");
    }

    // Every rule has a severity and a runbook.
    let yaml = read(&rules);
    for block in yaml.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim();
        for key in ["severity:", "summary:", "description:", "for:"] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        let severity = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .unwrap()
            .trim();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        assert!(
            block.contains("outpost "),
            "{name}: the description names no outpost command"
        );
    }
}

#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert_eq!(dash["uid"], "outpost");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["multi"], true, "$instance is multi-select");
    assert_eq!(instance["includeAll"], true);

    // The provisioning gives Grafana that data source and this file.
    let grafana = deploy().join("grafana/provisioning");
    let datasource = read(&grafana.join("datasources/prometheus.yaml"));
    for line in [
        "uid: prometheus",
        "type: prometheus",
        "url: http://prometheus:9090",
        "isDefault: true",
    ] {
        assert!(
            datasource.contains(line),
            "datasources/prometheus.yaml: no {line:?}"
        );
    }
    assert_eq!(
        var("datasource")["current"]["value"],
        "prometheus",
        "the dashboard's default data source is the provisioned one"
    );
    let provider = read(&grafana.join("dashboards/outpost.yaml"));
    assert!(
        provider.contains("path: /var/lib/grafana/dashboards"),
        "dashboards/outpost.yaml: {provider}"
    );

    let panels = panels(&dash);
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(ids.insert(p.id), "panel id {} is used twice", p.id);
        let (x, _, w, h) = p.grid;
        assert!(
            x >= 0 && w > 0 && h > 0 && x + w <= 24,
            "{:?}: gridPos {:?}",
            p.title,
            p.grid
        );
        assert!(!p.title.is_empty(), "panel {} has no title", p.id);
        if matches!(p.kind.as_str(), "row" | "text") {
            continue;
        }
        assert!(!p.targets.is_empty(), "{:?} has no queries", p.title);
        for (r, expr) in &p.targets {
            assert!(!expr.trim().is_empty(), "{:?} {r}: empty expr", p.title);
            assert!(
                expr.contains("$instance"),
                "{:?} {r}: ignores the node selection ($instance): {expr}",
                p.title
            );
        }
        let ds = &p.json["datasource"]["uid"];
        assert!(
            ds == "${datasource}" || ds == "prometheus",
            "{:?}: datasource {ds}",
            p.title
        );
        let unit = p.json["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("");
        assert!(!unit.is_empty(), "{:?} has no unit", p.title);
    }
    // No two panels overlap.
    for (i, a) in panels.iter().enumerate() {
        for b in &panels[i + 1..] {
            let (ax, ay, aw, ah) = a.grid;
            let (bx, by, bw, bh) = b.grid;
            let overlap = ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah;
            assert!(
                !overlap,
                "{:?} {:?} overlaps {:?} {:?}",
                a.title, a.grid, b.title, b.grid
            );
        }
    }

    // Every metric the dashboard and the alerts name exists: in the
    // definitions (src/metrics.rs), and, for those without labels (always
    // exported), in the live /metrics of a running node, with the labels
    // the queries use.
    let reference: HashMap<String, Vec<String>> = outpost::metrics::Metrics::new()
        .reference()
        .into_iter()
        .map(|d| (d.name, d.labels))
        .collect();
    let node = Server::start();
    let (code, text) = get(&format!("{}/metrics", node.admin));
    assert_eq!(code, 200);
    let live = families(&text);
    let known = |n: &str| reference.contains_key(n) || live.contains(n);
    let alerts_yml = read(&deploy().join("prometheus/alerts.yml"));
    let queries = dashboard_queries(&dash);
    let mut mentioned = metric_names(&alerts_yml);
    for (_, _, expr) in &queries {
        mentioned.extend(metric_names(expr));
    }
    for name in &mentioned {
        let family = family_of(name, &known);
        match reference.get(family) {
            Some(labels) if labels.is_empty() => assert!(
                live.contains(family),
                "{name}: defined without labels but not in a live node's /metrics:\n{text}"
            ),
            Some(_) => {}
            None => assert!(
                family.starts_with("process_") && live.contains(family),
                "{name} is named in deploy/ but no node exports it (not in src/metrics.rs, not in /metrics)"
            ),
        }
    }
    let mut exprs: Vec<(String, String)> = queries
        .iter()
        .map(|(t, r, e)| (format!("panel {t:?} {r}"), e.clone()))
        .collect();
    exprs.extend(
        alert_exprs(&alerts_yml)
            .into_iter()
            .map(|(a, e)| (format!("alert {a}"), e)),
    );
    for (what, expr) in &exprs {
        let sel = scan(expr);
        let mut allowed: BTreeSet<String> = ["job", "instance"].map(String::from).into();
        for (name, labels) in &sel.selectors {
            let family = family_of(name, &known);
            let Some(defined) = reference.get(family) else {
                continue;
            };
            allowed.extend(defined.iter().cloned());
            if family != name.as_str() {
                allowed.insert("le".into());
            }
            for l in labels {
                assert!(
                    l == "job"
                        || l == "instance"
                        || defined.contains(l)
                        || (l == "le" && family != name.as_str()),
                    "{what}: {name} has no label {l:?} (it has {defined:?}): {expr}"
                );
            }
        }
        if expr.contains("ALERTS") || expr.contains("up{") {
            continue;
        }
        for l in &sel.grouping {
            assert!(
                allowed.contains(l),
                "{what}: groups by {l:?}, which none of its metrics has ({allowed:?}): {expr}"
            );
        }
    }

    // Every query parses: promtool checks them as recording rules.
    let Some(promtool_bin) = tool(
        "dashboard_is_well_formed (PromQL syntax)",
        "OUTPOST_PROMTOOL",
        "promtool",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut index = Vec::new();
    for (title, r, expr) in &queries {
        index.push(format!("{title:?} {r}"));
        rules.push_str(&format!(
            "      - record: dashboard_query_{}\n        expr: {}\n",
            index.len(),
            serde_json::to_string(&promql(expr)).unwrap()
        ));
    }
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new(&promtool_bin)
        .args(["check", "rules", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "a dashboard query does not parse (dashboard_query_N is the Nth of {index:#?}):\n{text}\n{rules}"
    );
    assert!(
        text.contains(&format!("{} rules found", queries.len())),
        "{text}"
    );
}

/// Panels that may rightly be empty on a healthy cluster: nothing paused,
/// refused, quarantined, failing or firing.
const EMPTY_WHEN_HEALTHY: &[&str] = &[
    "Firing alerts",
    "Requests refused before execution",
    "Sync paused",
    "Quarantined updates by reason",
    "Backup upload failures",
];

#[test]
fn prometheus_scrapes_a_live_cluster() {
    let Some(prometheus_bin) = tool(
        "prometheus_scrapes_a_live_cluster",
        "OUTPOST_PROMETHEUS",
        "prometheus",
    ) else {
        return;
    };
    let started = Instant::now();

    // Three nodes: 2 and 3 peer with 1.
    let ca = tempfile::tempdir().unwrap();
    let node = |peers| common::cluster_node(ca.path(), peers);
    let mut n1 = node(vec![]);
    let hub = n1.sync.clone().expect("node 1 has a sync listener");
    let n2 = node(vec![hub.clone()]);
    let mut n3 = node(vec![hub]);
    let nodes = [&n1, &n2, &n3];
    for n in nodes {
        n.sql(
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)",
            vec![],
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..5 {
            n.sql(
                "INSERT INTO notes VALUES (?, ?)",
                vec![
                    common::int_arg((i * 100 + j) as i64),
                    text_arg(&format!("from node {}", i + 1)),
                ],
            );
        }
    }
    eventually(Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.rows("SELECT count(*) FROM notes", vec![])[0][0]["value"] == "15")
    });
    // A client error, so the error panel has a series.
    let (code, _) = post(
        &format!("{}/v2/pipeline", n1.api),
        n1.token.as_deref(),
        "{not json",
    );
    assert!((400..500).contains(&code), "a bad request answered {code}");
    let admin = |s: &Server| s.admin.trim_start_matches("http://").to_string();
    let targets: Vec<String> = nodes.iter().map(|n| admin(n)).collect();

    // Prometheus with the kit's config (targets and intervals replaced)
    // and the kit's alert rules.
    let port = free_port();
    let self_addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let original = read(&deploy().join("prometheus/prometheus.yml"));
    std::fs::write(
        dir.path().join("prometheus.yml"),
        derived_config(&original, &targets, &self_addr),
    )
    .unwrap();
    std::fs::copy(
        deploy().join("prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(&prometheus_bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={self_addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", prometheus_bin.display()));
    let prom = Prometheus {
        child,
        url: format!("http://{self_addr}"),
        dir,
    };

    // Every node is scraped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = ureq::get(&format!("{}/-/ready", prom.url))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if ready {
            let data = prom.api("targets", &[]);
            let up: BTreeSet<String> = data["activeTargets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["labels"]["job"] == "outpost" && t["health"] == "up")
                .map(|t| t["labels"]["instance"].as_str().unwrap().to_string())
                .collect();
            if targets.iter().all(|t| up.contains(t)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every node is up in Prometheus: {}\n{}",
                data,
                prom.log()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "Prometheus is not ready:\n{}",
                prom.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Some traffic across a few scrapes, so rates have two samples.
    for k in 0..3 {
        n2.sql(
            "INSERT INTO notes VALUES (?, 'later')",
            vec![common::int_arg(1000 + k)],
        );
        std::thread::sleep(Duration::from_millis(1100));
    }

    // Every dashboard query answers; those that must have data do.
    let dash = dashboard();
    let mut empty: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        empty.clear();
        for p in panels(&dash) {
            if p.targets.is_empty() {
                continue;
            }
            let mut results = Vec::new();
            for (r, expr) in &p.targets {
                let data = prom.api("query", &[("query", &promql(expr))]);
                let n = data["result"].as_array().map_or(0, Vec::len);
                if n == 0 {
                    results.push(format!("{r} empty: {}", promql(expr)));
                } else {
                    results.clear();
                    break;
                }
            }
            if !results.is_empty() && !EMPTY_WHEN_HEALTHY.contains(&p.title.as_str()) {
                empty.insert(p.title.clone(), results);
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        empty.is_empty(),
        "dashboard panels without data on a live cluster: {empty:#?}"
    );
    // The per-peer series name the peers by node id.
    let behind = prom.api("query", &[("query", "outpost_sync_peer_behind_entries")]);
    let ids: BTreeSet<String> = nodes.iter().map(|n| n.node_id()).collect();
    for series in behind["result"].as_array().unwrap() {
        let peer = series["metric"]["peer"].as_str().unwrap_or("");
        assert!(
            ids.contains(peer),
            "peer label {peer:?} is no node id: {series}"
        );
    }

    // Every alert rule evaluates without error, and none is active. The
    // disk alerts describe this machine's disk, shared with whatever else
    // runs: OutpostDiskNearlyFull may rightly be pending when the disk is
    // that full, and OutpostDiskFillingUp extrapolates seconds of data (it
    // needs an hour of it to fire). Nothing may fire.
    let free_ratio = prom.api(
        "query",
        &[(
            "query",
            "min(outpost_data_dir_free_bytes / on (job, instance) outpost_data_dir_capacity_bytes)",
        )],
    )["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the data dir's free ratio");
    let host_dependent = |name: &str| match name {
        "OutpostDiskFillingUp" => true,
        "OutpostDiskNearlyFull" => free_ratio < 0.11,
        _ => false,
    };
    let names = alert_names(&read(&deploy().join("prometheus/alerts.yml")));
    let mut problems = Vec::new();
    let mut tolerated = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        problems.clear();
        let data = prom.api("rules", &[("type", "alert")]);
        let mut seen = BTreeSet::new();
        for group in data["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["name"].as_str().unwrap().to_string();
                if rule["health"] != "ok" {
                    problems.push(format!(
                        "{name}: health {} {}",
                        rule["health"], rule["lastError"]
                    ));
                }
                let state = rule["state"].as_str().unwrap_or("");
                if state == "pending" && host_dependent(&name) {
                    tolerated.insert(name.clone());
                } else if state != "inactive" {
                    problems.push(format!("{name}: {state} {}", rule["alerts"]));
                }
                seen.insert(name);
            }
        }
        if seen != names {
            problems.push(format!("rules loaded {seen:?}, alerts.yml has {names:?}"));
        }
        if problems.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        problems.is_empty(),
        "alert rules on a healthy cluster: {problems:#?}"
    );
    if !tolerated.is_empty() {
        eprintln!(
            "pending because of this machine's disk ({:.1}% free): {tolerated:?}",
            free_ratio * 100.0
        );
    }

    // A node dies: OutpostDown goes pending for it (firing after `for:`).
    let dead = admin(&n3);
    n3.kill();
    let killed = Instant::now();
    let after = prom.wait_for_alert(
        |a| a["labels"]["alertname"] == "OutpostDown" && a["labels"]["instance"] == dead.as_str(),
        &format!("OutpostDown for {dead}"),
    );
    eprintln!(
        "OutpostDown pending {:.1} s after the kill",
        after.as_secs_f64()
    );
    // The hub dies: node 2 loses its configured peer, and
    // OutpostPeerDisconnected goes pending on node 2 for it (named by its
    // node id, or its URL).
    let hub_id = n1.node_id();
    let hub_url = n1.sync.clone().unwrap();
    let n2_instance = admin(&n2);
    n1.kill();
    let after = prom.wait_for_alert(
        |a| {
            a["labels"]["alertname"] == "OutpostPeerDisconnected"
                && a["labels"]["instance"] == n2_instance.as_str()
                && (a["labels"]["peer"] == hub_id.as_str()
                    || a["labels"]["peer"] == hub_url.as_str())
        },
        &format!("OutpostPeerDisconnected on {n2_instance} for the hub"),
    );
    eprintln!(
        "OutpostPeerDisconnected pending {:.1} s after the hub's kill; the whole test took {:.1} s (OutpostDown {:.1} s ago)",
        after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    drop(prom);
}
